"""`data.source: imagefolder` (pipeline/data/imagefolder.py) on hand-built tiny image trees."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from pipeline.config.data import ImageFolderConfig, SubsetConfig
from pipeline.data.datasets import load_image_list
from pipeline.data.imagefolder import ImageFolderError, select_imagefolder
from pipeline.data.manifest import MANIFEST_NAME, classes_of, read_manifest, readable_names_of
from pipeline.data.selection import check_image, write_selection
from pipeline.data.subset import SUBSET_NAME, SubsetError, read_subset
from stages.cli import app

HEIGHT, WIDTH = 50, 40
K, V = 2, 1  # fine-tuning images per seen class, validation images per class
EXPECTED_PROBLEM = {
    "corrupt": "corrupt",
    "truncated": "truncated",
    "tiny": "tiny",
    "cmyk": "cmyk",
    "gray": "grayscale",
    "palette": "palette",
    "alpha": "alpha",
}
REPLACED = {"corrupt", "truncated", "tiny"}


def _pixels(seed: int, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _jpeg_bytes(pixels: np.ndarray, mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def write_file(folder: Path, kind: str, index: int, seed: int) -> Path:
    """One image file of ``kind``; the kind is the start of the file name (``<kind>_<index>``)."""
    folder.mkdir(parents=True, exist_ok=True)
    pixels = _pixels(seed)
    if kind == "good":
        path = folder / f"good_{index:02d}.png"
        Image.fromarray(pixels).save(path)
    elif kind == "truncated":  # first half of a valid JPEG: opens, fails on decode
        path = folder / f"truncated_{index:02d}.jpg"
        data = _jpeg_bytes(pixels)
        path.write_bytes(data[: len(data) // 2])
    elif kind == "corrupt":
        path = folder / f"corrupt_{index:02d}.jpg"
        path.write_bytes(np.random.default_rng(seed).bytes(400))
    elif kind == "tiny":
        path = folder / f"tiny_{index:02d}.png"
        Image.fromarray(pixels[:10, :10]).save(path)
    elif kind == "cmyk":
        path = folder / f"cmyk_{index:02d}.jpg"
        path.write_bytes(_jpeg_bytes(pixels, "CMYK"))
    elif kind == "gray":
        path = folder / f"gray_{index:02d}.png"
        Image.fromarray(pixels).convert("L").save(path)
    elif kind == "palette":
        path = folder / f"palette_{index:02d}.png"
        Image.fromarray(pixels).convert("P").save(path)
    elif kind == "alpha":
        path = folder / f"alpha_{index:02d}.png"
        Image.fromarray(pixels).convert("RGBA").save(path)
    else:
        raise AssertionError(kind)
    return path


def make_tree(root: Path, classes: dict[str, list[str]]) -> Path:
    """``root/<class>/<kind>_<i>.<ext>``; a file's pixels depend only on its class and index."""
    for class_number, (class_id, kinds) in enumerate(classes.items()):
        for index, kind in enumerate(kinds):
            write_file(root / class_id, kind, index, seed=1000 * class_number + index)
    return root


def select(
    root: Path, manifest_dir: Path, seed: int = 0, k: int = K, v: int = V, **config: object
) -> tuple[pa.Table, pa.Table, dict]:
    subset = SubsetConfig(images_per_class=k, val_images_per_class=v, seed=seed)
    return select_imagefolder(ImageFolderConfig(root=str(root), **config), subset, manifest_dir, workers=2)


def chosen_by_class(manifest: pa.Table) -> dict[str, dict[str, list[str]]]:
    """class -> split -> image ids, in manifest order."""
    out: dict[str, dict[str, list[str]]] = {}
    for image_id, class_name, split in zip(
        *(manifest.column(c).to_pylist() for c in ("image_id", "class_name", "split")), strict=True
    ):
        out.setdefault(class_name, {"train": [], "val": []})[split].append(image_id)
    return out


def seen_of(chosen: pa.Table) -> list[str]:
    return json.loads(chosen.schema.metadata[b"cft.subset"])["seen_classes"]


@pytest.fixture(scope="module")
def clean_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 classes x 5 good images (read-only for the tests)."""
    return make_tree(tmp_path_factory.mktemp("clean") / "images", {f"c{i}": ["good"] * 5 for i in range(8)})


# --- decoding -------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["good", *EXPECTED_PROBLEM])
def test_check_image_classifies_each_kind(tmp_path: Path, kind: str) -> None:
    check = check_image(write_file(tmp_path, kind, 0, seed=1), min_side=32)
    assert check.problem == EXPECTED_PROBLEM.get(kind)
    assert check.usable == (kind not in REPLACED)
    if check.usable:
        assert (check.width, check.height) == (WIDTH, HEIGHT)


# --- selection ------------------------------------------------------------------------------------


def test_same_seed_gives_identical_manifest_and_subset(clean_tree: Path, tmp_path: Path) -> None:
    first = select(clean_tree, tmp_path / "prepared", seed=3)
    second = select(clean_tree, tmp_path / "prepared", seed=3)
    assert first[0].equals(second[0], check_metadata=True)
    assert first[1].equals(second[1], check_metadata=True)
    assert first[2] == second[2]


def test_different_subset_seed_changes_seen_classes(clean_tree: Path, tmp_path: Path) -> None:
    seen = {seed: seen_of(select(clean_tree, tmp_path / "prepared", seed=seed)[1]) for seed in (0, 1)}
    assert seen[0] != seen[1]
    assert len(seen[0]) == len(seen[1]) == 4


def test_counts_splits_and_subset_table(clean_tree: Path, tmp_path: Path) -> None:
    manifest, chosen, report = select(clean_tree, tmp_path / "prepared", seed=0)
    classes = [f"c{i}" for i in range(8)]
    assert classes_of(manifest) == classes
    seen = seen_of(chosen)
    assert len(seen) == 4 and set(seen) <= set(classes)
    assert json.loads(chosen.schema.metadata[b"cft.subset"])["unseen_classes"] == [c for c in classes if c not in seen]

    by_class = chosen_by_class(manifest)
    assert set(by_class) == set(classes)
    for class_id, splits in by_class.items():
        assert len(splits["train"]) == (K if class_id in seen else 0), class_id
        assert len(splits["val"]) == V, class_id
        assert not set(splits["train"]) & set(splits["val"])
        assert all(image_id.startswith(f"{class_id}/") for image_id in splits["train"] + splits["val"])

    ids = manifest.column("image_id").to_pylist()
    assert len(set(ids)) == len(ids) == 4 * K + 8 * V
    assert set(manifest.column("source_index").to_pylist()) == {-1}
    assert all((clean_tree / image_id).is_file() for image_id in ids)
    assert set(manifest.column("width").to_pylist()) == {WIDTH} and set(manifest.column("height").to_pylist()) == {
        HEIGHT
    }

    # the subset table mirrors the manifest: split train = finetune role (seen classes), val = val
    roles = dict(zip(chosen.column("image_id").to_pylist(), chosen.column("role").to_pylist(), strict=True))
    splits = dict(zip(ids, manifest.column("split").to_pylist(), strict=True))
    assert roles == {image_id: {"train": "finetune", "val": "val"}[split] for image_id, split in splits.items()}
    for class_name, is_seen in zip(
        chosen.column("class_name").to_pylist(), chosen.column("seen").to_pylist(), strict=True
    ):
        assert is_seen == (class_name in seen)

    assert (report["classes"], report["seen_classes"], report["finetune_images"], report["val_images"]) == (
        8,
        4,
        4 * K,
        8 * V,
    )
    assert report["problems"] == [] and report["checked"] == len(ids)


def test_bad_files_are_reported_and_replaced(tmp_path: Path) -> None:
    # Every class holds exactly K + V good files, so a seen class needs all of them: every bad
    # file drawn before the last good one must have been replaced by a later one.
    bad = ["corrupt", "truncated", "tiny"]
    root = make_tree(tmp_path / "images", {f"c{i}": ["good"] * (K + V) + bad for i in range(8)})
    manifest, chosen, report = select(root, tmp_path / "prepared")
    seen = seen_of(chosen)
    by_class = chosen_by_class(manifest)
    for class_id in seen:
        picked = by_class[class_id]["train"] + by_class[class_id]["val"]
        assert sorted(picked) == [f"{class_id}/good_{i:02d}.png" for i in range(K + V)]
    for class_id, splits in by_class.items():
        assert len(splits["train"]) == (K if class_id in seen else 0) and len(splits["val"]) == V
        assert all("/good_" in image_id for image_id in splits["train"] + splits["val"])

    problems = report["problems"]
    assert problems, "the seeded orders put no bad file before a needed good one; the test would prove nothing"
    for problem in problems:
        name = Path(problem["file"]).name
        assert problem["problem"] == EXPECTED_PROBLEM[name.split("_")[0]], problem
        assert problem["replaced"] is True and problem["detail"]
    kinds = {problem["problem"] for problem in problems}
    assert kinds == REPLACED  # each kind was drawn somewhere (deterministic for this tree and seed)
    assert report["replaced"] == {
        kind: sum(p["problem"] == kind for p in problems) for kind in ("corrupt", "truncated", "tiny")
    }
    assert report["checked"] == manifest.num_rows + len(problems)


def test_replacement_in_one_class_leaves_other_classes_alone(tmp_path: Path) -> None:
    good = {f"c{i}": ["good"] * 5 for i in range(8)}
    plain = make_tree(tmp_path / "plain" / "images", good)
    broken = make_tree(tmp_path / "broken" / "images", good)
    # c0's folder gets only bad extras: its draw must replace them; no other class may notice.
    make_tree(
        tmp_path / "broken" / "images",
        {"c0": ["good"] * 5 + ["corrupt", "truncated", "tiny", "corrupt", "truncated", "tiny"]},
    )
    plain_manifest, plain_chosen, _ = select(plain, tmp_path / "plain" / "prepared")
    broken_manifest, broken_chosen, report = select(broken, tmp_path / "broken" / "prepared")
    assert any(Path(p["file"]).parent.name == "c0" and p["replaced"] for p in report["problems"])
    assert seen_of(plain_chosen) == seen_of(broken_chosen)
    plain_by_class, broken_by_class = chosen_by_class(plain_manifest), chosen_by_class(broken_manifest)
    for class_id in [f"c{i}" for i in range(1, 8)]:
        assert plain_by_class[class_id] == broken_by_class[class_id], class_id


def test_grayscale_cmyk_palette_alpha_are_kept_and_read_as_rgb(tmp_path: Path) -> None:
    # Every file is a converted kind, and seen classes need all K + V = 3 of their files.
    kinds = ["cmyk", "gray", "palette"]
    root = make_tree(
        tmp_path / "images", {"a": kinds, "b": kinds, "c": ["alpha", "gray", "cmyk"], "d": ["palette", "alpha", "cmyk"]}
    )
    manifest, chosen, report = select(root, tmp_path / "prepared")
    assert not any(report["replaced"].values())
    seen = seen_of(chosen)
    for class_id, splits in chosen_by_class(manifest).items():
        assert len(splits["train"]) + len(splits["val"]) == (K + V if class_id in seen else V)
    for problem in report["problems"]:
        assert problem["replaced"] is False
        assert problem["problem"] == EXPECTED_PROBLEM[Path(problem["file"]).name.split("_")[0]]
    assert sum(report["converted"].values()) == manifest.num_rows == len(report["problems"])
    modes = dict(zip(manifest.column("image_id").to_pylist(), manifest.column("mode").to_pylist(), strict=True))
    assert {modes[i].upper() for i in modes} <= {"CMYK", "L", "P", "RGBA"}

    images = load_image_list(tmp_path / "prepared", manifest)
    for image_id, image in zip(manifest.column("image_id").to_pylist(), images, strict=True):
        assert image.shape == (HEIGHT, WIDTH, 3) and image.dtype == np.uint8, image_id
        expected = np.asarray(Image.open(root / image_id).convert("RGB"))
        np.testing.assert_array_equal(image, expected)
        if "/gray_" in image_id:
            assert (image[..., 0] == image[..., 1]).all() and (image[..., 1] == image[..., 2]).all()


def test_too_few_readable_images_names_the_class_folder(tmp_path: Path) -> None:
    classes = {f"c{i}": ["good"] * 4 for i in range(4)}
    classes["c2"] = ["corrupt", "truncated", "tiny"]  # no readable image at all: even an unseen class needs V
    root = make_tree(tmp_path / "images", classes)
    with pytest.raises(SubsetError, match=r"too few readable images.*'?c2 \(0 of \d\)") as caught:
        select(root, tmp_path / "prepared")
    assert str(root) in str(caught.value)


def test_missing_root_and_single_class_are_clear_errors(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(ImageFolderError, match=re.escape(str(missing))):
        select(missing, tmp_path / "prepared")
    root = make_tree(tmp_path / "one", {"only": ["good"] * 5})
    (root / ".hidden").mkdir()  # hidden folders are not classes
    write_file(root / ".hidden", "good", 0, seed=0)
    with pytest.raises(ImageFolderError, match=re.escape(str(root)) + r".*at least two class folders"):
        select(root, tmp_path / "prepared")


def test_empty_class_folder_is_an_error_naming_it(tmp_path: Path) -> None:
    """Skipping a folder without images would shift every later class's index (c1 would take c0's
    place), against a model trained on all the folders: the folder is named instead."""
    root = make_tree(tmp_path / "images", {f"c{i}": ["good"] * 4 for i in (0, 2, 3)})
    (root / "c1").mkdir()
    (root / "c1" / "notes.txt").write_text("not an image")
    (root / "c4").mkdir()
    with pytest.raises(ImageFolderError, match=r"2 of 5 class folder\(s\) hold no image") as caught:
        select(root, tmp_path / "prepared")
    message = str(caught.value)
    assert f"{root / 'c1'} (1 file(s) with other extensions)" in message and str(root / "c4") in message
    assert "shift" in message and "data.imagefolder.extensions" in message
    assert not (tmp_path / "prepared").exists()

    # through `cft prepare`: exit status 2, the folder named, nothing written
    params = tmp_path / "params.yaml"
    params.write_text(
        yaml.safe_dump(
            {
                "data": {
                    "source": "imagefolder",
                    "imagefolder": {"root": str(root)},
                    "subset": {"images_per_class": K, "val_images_per_class": V},
                }
            }
        )
    )
    out = tmp_path / "data" / "prepared"
    result = runner.invoke(
        app,
        [
            "prepare",
            "--params",
            str(params),
            "--out",
            str(out),
            "--subset",
            str(tmp_path / "subset"),
            "--metrics",
            str(tmp_path / "m.json"),
        ],
    )
    assert result.exit_code == 2, result.output
    assert str(root / "c4") in result.output and not out.exists()

    # with images in both folders the classes keep the folders' sorted order
    for index in range(2):
        write_file(root / "c1", "good", index, seed=7 + index)
        write_file(root / "c4", "good", index, seed=9 + index)
    manifest, _, _ = select(root, tmp_path / "prepared", k=1, v=1)
    assert classes_of(manifest) == ["c0", "c1", "c2", "c3", "c4"]


# --- class names ----------------------------------------------------------------------------------


@pytest.mark.parametrize("format", ["json", "text"])
def test_class_name_file_is_stored_in_the_manifest(tmp_path: Path, format: str) -> None:
    root = make_tree(tmp_path / "images", {f"id{i}": ["good"] * 3 for i in range(4)})
    names = {"id0": "red fox", "id1": "school bus", "id2": "tabby cat", "id3": "ice cream"}
    if format == "json":
        name_file = tmp_path / "names.json"
        name_file.write_text(json.dumps({**names, "id9": "not a folder"}))
    else:
        name_file = tmp_path / "names.txt"
        name_file.write_text(
            "# id name\n\n"
            + "".join(f"{k}\t{v}\n" if i % 2 else f"{k} {v}  \n" for i, (k, v) in enumerate(names.items()))
        )
    manifest, _, _ = select(root, tmp_path / "prepared", class_names=str(name_file))
    assert readable_names_of(manifest) == names
    assert classes_of(manifest) == list(names)


def test_name_file_missing_a_class_names_the_file(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "images", {f"id{i}": ["good"] * 3 for i in range(3)})
    name_file = tmp_path / "names.txt"
    name_file.write_text("id0 zero\nid1 one\n")
    with pytest.raises(ImageFolderError, match=re.escape(str(name_file)) + r".*id2"):
        select(root, tmp_path / "prepared", class_names=str(name_file))
    with pytest.raises(ImageFolderError, match=re.escape(str(tmp_path / "absent.json"))):
        select(root, tmp_path / "prepared", class_names=str(tmp_path / "absent.json"))


def test_wordnet_folders_get_imagenet_names_and_others_their_folder_name(tmp_path: Path) -> None:
    root = make_tree(
        tmp_path / "images",
        {"n01440764": ["good"] * 3, "n01443537": ["good"] * 3, "school_bus": ["good"] * 3, "zebra": ["good"] * 3},
    )
    manifest, _, _ = select(root, tmp_path / "prepared")
    assert readable_names_of(manifest) == {
        "n01440764": "tench",
        "n01443537": "goldfish",
        "school_bus": "school bus",
        "zebra": "zebra",
    }


# --- file locations -------------------------------------------------------------------------------


def test_relative_root_is_stored_relative_to_the_manifest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_tree(tmp_path / "photos", {f"c{i}": ["good"] * 4 for i in range(4)})
    monkeypatch.chdir(tmp_path)
    out = Path("data") / "prepared"
    manifest, _, report = select(Path("photos"), out)
    write_selection(out, manifest, report)

    written = read_manifest(tmp_path / out / MANIFEST_NAME)
    sources = written.column("source").to_pylist()
    assert all(not Path(source).is_absolute() for source in sources)
    assert sources == [f"../../photos/{image_id}" for image_id in written.column("image_id").to_pylist()]
    monkeypatch.chdir(tmp_path / "data")  # readers resolve against the manifest, not the working directory
    for image_id, image in zip(
        written.column("image_id").to_pylist(), load_image_list(tmp_path / out, written), strict=True
    ):
        np.testing.assert_array_equal(image, np.asarray(Image.open(tmp_path / "photos" / image_id)))


def test_absolute_root_is_stored_absolute(clean_tree: Path, tmp_path: Path) -> None:
    manifest, _, _ = select(clean_tree, tmp_path / "prepared")
    assert manifest.column("source").to_pylist() == [
        str(clean_tree / image_id) for image_id in manifest.column("image_id").to_pylist()
    ]


# --- `cft prepare` --------------------------------------------------------------------------------

runner = CliRunner()


def test_cft_prepare_imagefolder_end_to_end(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "images", {f"c{i}": ["good"] * 3 + ["corrupt", "gray"] for i in range(4)})
    params = tmp_path / "params.yaml"
    params.write_text(
        yaml.safe_dump(
            {
                "data": {
                    "source": "imagefolder",
                    "imagefolder": {"root": str(root)},
                    "subset": {"images_per_class": K, "val_images_per_class": V, "seed": 0},
                }
            }
        )
    )
    out, subset, metrics = (
        tmp_path / "data" / "prepared",
        tmp_path / "data" / "subset",
        tmp_path / "metrics" / "prepare.json",
    )
    result = runner.invoke(
        app,
        [
            "prepare",
            "--params",
            str(params),
            "--out",
            str(out),
            "--subset",
            str(subset),
            "--metrics",
            str(metrics),
            "--workers",
            "2",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "4 classes" in result.output and "fine-tuning subset" in result.output

    manifest = read_manifest(out / MANIFEST_NAME)
    assert manifest.num_rows == 2 * K + 4 * V
    report = json.loads((out / "report.json").read_text())
    assert report["finetune_images"] == 2 * K and report["val_images"] == 4 * V
    with Image.open(out / "contact_sheets" / "finetune.png") as sheet:
        assert sheet.size[0] > 0 and sheet.size[1] > 0
    chosen, metadata = read_subset(subset / SUBSET_NAME)
    assert len(metadata["seen_classes"]) == 2
    assert sorted(chosen.column("image_id").to_pylist()) == sorted(manifest.column("image_id").to_pylist())
    summary = json.loads(metrics.read_text())
    assert summary["subset"] == {"seen_classes": 2, "finetune_images": 2 * K}
    assert summary["imagefolder"]["classes"] == 4 and summary["imagefolder"]["replaced"] == report["replaced"]
    # the written files are readable from the manifest's own folder
    assert all(image.shape == (HEIGHT, WIDTH, 3) for image in load_image_list(out, manifest))


def test_cft_prepare_imagefolder_without_its_section_names_the_key(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"data": {"source": "imagefolder"}}))
    result = runner.invoke(
        app,
        [
            "prepare",
            "--params",
            str(params),
            "--out",
            str(tmp_path / "out"),
            "--subset",
            str(tmp_path / "subset"),
            "--metrics",
            str(tmp_path / "m.json"),
        ],
    )
    assert result.exit_code == 2, result.output
    assert "data.imagefolder" in result.output
    assert not (tmp_path / "out").exists()


def test_annotated_mask_backend_on_an_image_folder_says_to_use_grounded_sam(tmp_path: Path) -> None:
    """An image folder has no part annotations: the error says what the annotated backend needs and
    which backend image folders take, instead of naming a missing world.json."""
    from pipeline.concepts.store import write_concepts

    root = make_tree(tmp_path / "images", {f"c{i}": ["good"] * 3 for i in range(2)})
    params = tmp_path / "params.yaml"
    params.write_text(
        yaml.safe_dump(
            {
                "data": {
                    "source": "imagefolder",
                    "imagefolder": {"root": str(root)},
                    "subset": {"images_per_class": K, "val_images_per_class": V},
                },
                "masks": {"backend": "annotated", "resolution": 16},
            }
        )
    )
    out, subset = tmp_path / "data" / "prepared", tmp_path / "data" / "subset"
    result = runner.invoke(
        app,
        [
            "prepare",
            "--params",
            str(params),
            "--out",
            str(out),
            "--subset",
            str(subset),
            "--metrics",
            str(tmp_path / "m.json"),
            "--workers",
            "1",
        ],
    )
    assert result.exit_code == 0, result.output
    write_concepts(tmp_path / "concepts", {"c0": ["head"], "c1": ["tail"]}, {"source": "test"})
    masks = tmp_path / "data" / "masks"
    result = runner.invoke(
        app,
        [
            "masks",
            "--params",
            str(params),
            "--data",
            str(out),
            "--subset",
            str(subset),
            "--concepts",
            str(tmp_path / "concepts"),
            "--out",
            str(masks),
            "--work",
            str(tmp_path / "work"),
            "--sheet",
            str(tmp_path / "masks.png"),
        ],
    )
    assert result.exit_code == 2, result.output
    message = " ".join(result.output.split())
    assert "annotated needs part annotations that come with the data (the built-in world" in message
    assert "an image folder (data.source: imagefolder)" in message and "set masks.backend: grounded_sam" in message
    assert "world.json" not in message
    assert not masks.exists()
