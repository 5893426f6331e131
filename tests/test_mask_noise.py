"""Simulated Grounded-SAM errors on the annotated backend's exact masks (``masks.annotated``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import yaml

from pipeline.config import ConfigError, load_section
from pipeline.config.masks import AnnotatedMasksConfig, MasksConfig
from pipeline.masks.annotated import annotated_masks
from pipeline.masks.noise import SMALL_AREA, _grow, concept_rng, degrade_mask, leak_box, miss_probability
from pipeline.masks.store import ImageMasks, write_mask_store

SIDE = 48
CUE = 255  # a cue region inside the object outline that is no named part


def synthetic_label_maps(count: int, seed: int = 0) -> list[np.ndarray]:
    """(SIDE, SIDE) uint8 maps: 1 to 4 rectangular or elliptic parts of widely varying size (from a
    few pixels to a quarter of the image, later parts painted on top), and in every other map a cue
    region labelled 255."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[:SIDE, :SIDE]
    maps = []
    for index in range(count):
        labels = np.zeros((SIDE, SIDE), dtype=np.uint8)
        for k in range(1, int(rng.integers(1, 5)) + 1):
            half_h, half_w = np.exp(rng.uniform(0.0, np.log(13.0), size=2))  # log-uniform: many small parts
            cy, cx = rng.uniform(half_h, SIDE - half_h), rng.uniform(half_w, SIDE - half_w)
            if rng.random() < 0.5:
                shape = (np.abs(ys - cy) <= half_h) & (np.abs(xs - cx) <= half_w)
            else:
                shape = ((ys - cy) / half_h) ** 2 + ((xs - cx) / half_w) ** 2 <= 1.0
            labels[shape] = k
        if index % 2:
            labels[rng.integers(0, SIDE - 4) :][:4, :6] = CUE
        maps.append(labels)
    return maps


def part_instances(maps: list[np.ndarray]) -> list[tuple[str, str, np.ndarray]]:
    """(image id, concept, exact mask) of every part visible in the maps (255 is no part)."""
    return [
        (f"img{i}", f"part {k}", labels == k)
        for i, labels in enumerate(maps)
        for k in range(1, 5)
        if (labels == k).any()
    ]


@pytest.fixture(scope="module")
def instances() -> list[tuple[str, str, np.ndarray]]:
    return part_instances(synthetic_label_maps(400))


def degrade_all(
    instances: list[tuple[str, str, np.ndarray]], noise: float, seed: int = 0
) -> list[tuple[np.ndarray, bool]]:
    return [degrade_mask(part, noise, concept_rng(seed, image_id, concept)) for image_id, concept, part in instances]


def box_mask(part: np.ndarray) -> np.ndarray:
    rows, cols = leak_box(part)
    box = np.zeros_like(part)
    box[rows, cols] = True
    return box


# --- the noise model --------------------------------------------------------------------------


def test_noise_zero_returns_the_exact_mask(instances: list[tuple[str, str, np.ndarray]]) -> None:
    for (_, _, part), (mask, missed) in zip(instances, degrade_all(instances, 0.0), strict=True):
        assert not missed and mask is part


def test_miss_rate_follows_the_formula_and_hits_small_parts_more(instances: list[tuple[str, str, np.ndarray]]) -> None:
    areas = np.array([part.mean() for _, _, part in instances])
    small, large = areas < 0.01, areas > 0.05
    assert small.sum() > 100 and large.sum() > 100 and len(instances) > 900
    rates = {}
    for noise in (0.25, 0.5, 1.0):
        missed = np.array([m for _, m in degrade_all(instances, noise)])
        expected = miss_probability(noise, areas)
        # the count of misses is a sum of independent Bernoulli(p_i): within 4 standard deviations
        assert abs(missed.sum() - expected.sum()) <= 4 * np.sqrt((expected * (1 - expected)).sum()), noise
        for group in (small, large):
            assert (
                abs(missed[group].sum() - expected[group].sum())
                <= 4 * np.sqrt((expected[group] * (1 - expected[group])).sum()) + 1
            )
        rates[noise] = (missed.mean(), missed[small].mean(), missed[large].mean())
        assert rates[noise][1] > 2 * rates[noise][2]  # small parts are missed far more often
    assert rates[0.25][0] < rates[0.5][0] < rates[1.0][0]
    assert rates[0.25][1] < rates[0.5][1] < rates[1.0][1]
    # at noise 1, f itself: a vanishing part is nearly always missed, one of SMALL_AREA half the time
    assert (
        miss_probability(1.0, 0.0) == 1.0
        and miss_probability(1.0, SMALL_AREA) == 0.5
        and miss_probability(0.4, SMALL_AREA) == pytest.approx(0.2)
    )
    assert rates[1.0][1] > 0.6 and rates[1.0][2] < 0.25


def test_misses_and_leaks_are_coupled_across_noise_levels(instances: list[tuple[str, str, np.ndarray]]) -> None:
    """The same draws at every level: a part missed at 0.3 is missed at 0.6, and so on."""
    low, high = degrade_all(instances, 0.3), degrade_all(instances, 0.6)
    assert all(h_missed for (_, l_missed), (_, h_missed) in zip(low, high, strict=True) if l_missed)
    assert sum(m for _, m in high) > sum(m for _, m in low)


def test_leakage_grows_with_noise_and_matches_its_expectation(instances: list[tuple[str, str, np.ndarray]]) -> None:
    leaked_share = {}
    for noise in (0.25, 0.5, 0.75, 1.0):
        leaked, lower, upper, found = 0, 0.0, 0.0, 0
        for (_, _, part), (mask, missed) in zip(instances, degrade_all(instances, noise), strict=True):
            if missed:
                continue
            found += 1
            box = box_mask(part)
            outside = mask & ~part
            assert not (mask & ~box).any()  # never beyond the enlarged box
            candidates = int((box & ~part).sum())
            ring = int((_grow(part, diagonal=False) & ~part).sum())  # what a one-pixel dilation adds
            leaked += int(outside.sum())
            lower += noise * noise * candidates  # the leak event (p = noise) takes noise * |C| pixels
            upper += noise * noise * candidates + noise / 2 * ring + 1  # plus a dilation's ring, plus rounding
            if noise == 1.0:
                np.testing.assert_array_equal(mask, box)  # at noise 1 every found mask is its enlarged box
        assert 0.85 * lower <= leaked <= 1.15 * upper, (noise, leaked, lower, upper)
        leaked_share[noise] = leaked / found
    assert leaked_share[0.25] < leaked_share[0.5] < leaked_share[0.75] < leaked_share[1.0]


def test_leakage_is_a_blob_attached_to_the_part(instances: list[tuple[str, str, np.ndarray]]) -> None:
    """Leaked pixels grow out of the part (8-connected to it through the mask), not scattered over the box."""
    for noise in (0.2, 0.5):
        leaked = attached = 0
        for (_, _, part), (mask, missed) in zip(instances, degrade_all(instances, noise), strict=True):
            outside = mask & ~part
            if missed or not outside.any():
                continue
            reached = mask & part
            while (grown := _grow(reached, diagonal=True) & mask).sum() > reached.sum():
                reached = grown
            leaked += int(outside.sum())
            attached += int((outside & reached).sum())
        assert attached >= 0.95 * leaked > 0


def test_deterministic_by_seed_image_and_concept(instances: list[tuple[str, str, np.ndarray]]) -> None:
    some = instances[:200]
    first, again = degrade_all(some, 0.6, seed=3), degrade_all(some, 0.6, seed=3)
    reversed_order = [
        degrade_mask(part, 0.6, concept_rng(3, image_id, concept)) for image_id, concept, part in reversed(some)
    ][::-1]
    for (a, a_missed), (b, b_missed), (c, c_missed) in zip(first, again, reversed_order, strict=True):
        assert a_missed == b_missed == c_missed
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)
    other = degrade_all(some, 0.6, seed=4)
    assert any(
        a_missed != o_missed or not np.array_equal(a, o)
        for (a, a_missed), (o, o_missed) in zip(first, other, strict=True)
    )
    # the concept's name is matched case-insensitively, so is its noise
    image_id, concept, part = some[0]
    np.testing.assert_array_equal(degrade_mask(part, 0.6, concept_rng(3, image_id, concept.upper()))[0], first[0][0])


def test_cue_region_is_no_part_but_leakage_may_cover_it() -> None:
    labels = np.zeros((24, 24), dtype=np.uint8)
    labels[4:12, 4:12] = 1
    labels[12:20, 4:12] = CUE
    part = labels == 1
    mask, missed = degrade_mask(part, 1.0, concept_rng(0, "img", "head"))
    if not missed:
        np.testing.assert_array_equal(mask, box_mask(part))
        assert (mask & (labels == CUE)).any()  # the enlarged box reaches into the cue
    assert miss_probability(1.0, part.mean()) == pytest.approx(SMALL_AREA / (SMALL_AREA + 64 / 576))


# --- the annotated backend --------------------------------------------------------------------


def train_ids(manifest: pa.Table) -> list[str]:
    return manifest.filter(pc.equal(manifest.column("split"), "train")).column("image_id").to_pylist()


def test_backend_at_noise_zero_is_todays_store(
    tiny_world: Path, manifest: pa.Table, world_concepts: dict[str, list[str]], tmp_path: Path
) -> None:
    ids = train_ids(manifest)[:20]
    concepts = {cls: [*names[:2], "unicorn horn"] for cls, names in world_concepts.items()}
    exact, size = annotated_masks(tiny_world, manifest, ids, concepts, None, progress=False)
    zero, _ = annotated_masks(
        tiny_world, manifest, ids, concepts, None, progress=False, noise=AnnotatedMasksConfig(noise=0.0, seed=7)
    )
    for a, b in zip(exact, zero, strict=True):
        assert (a.concepts, a.missing, a.boxes, a.scores, a.fallback, a.flags()) == (
            b.concepts,
            b.missing,
            b.boxes,
            b.scores,
            b.fallback,
            b.flags(),
        )
        assert b.boxes == [] and a.masks.dtype == b.masks.dtype
        np.testing.assert_array_equal(a.masks, b.masks)
    assert write_mask_store(tmp_path / "a", exact, size, "annotated").equals(
        write_mask_store(tmp_path / "b", zero, size, "annotated")
    )


def test_backend_flags_missed_parts_and_falls_back(
    tiny_world: Path, manifest: pa.Table, world_concepts: dict[str, list[str]]
) -> None:
    ids = train_ids(manifest)
    # each class's last part (eyes, beaks, spots: mostly small) and a concept the data cannot annotate
    smallest = {cls: [names[-1], "unicorn horn"] for cls, names in world_concepts.items()}
    exact, _ = annotated_masks(tiny_world, manifest, ids, smallest, None, progress=False)
    noisy, _ = annotated_masks(
        tiny_world, manifest, ids, smallest, None, progress=False, noise=AnnotatedMasksConfig(noise=1.0)
    )
    missed = 0
    for a, b in zip(exact, noisy, strict=True):
        flags = b.flags()
        assert flags[1] == "no_annotation" and b.boxes[1] is None and b.missing[:2] == [False, True]
        if not a.masks[0].any():
            assert b.boxes[0] is None and flags[0] == "empty"
        elif b.boxes[0] == 0:
            missed += 1
            assert flags[0] == "no_box" and not b.masks[0].any()
            # nothing usable left: the whole object, itself degraded, is the fallback
            assert b.fallback and b.concepts[-1] == "whole object" and b.boxes[-1] in (0, 1)
            assert flags[-1] == ("fallback" if b.boxes[-1] == 1 else "no_box")
        else:
            assert flags[0] == "ok" and b.boxes[0] == 1 and not b.fallback
            np.testing.assert_array_equal(b.masks[0], box_mask(a.masks[0]))
    assert missed > len(ids) // 4


def test_backend_noise_is_independent_of_order_and_batches(
    tiny_world: Path, manifest: pa.Table, world_concepts: dict[str, list[str]]
) -> None:
    ids = train_ids(manifest)[:24]
    settings = AnnotatedMasksConfig(noise=0.5, seed=2)
    whole, _ = annotated_masks(tiny_world, manifest, ids, world_concepts, 16, progress=False, noise=settings)
    backwards, _ = annotated_masks(tiny_world, manifest, ids[::-1], world_concepts, 16, progress=False, noise=settings)
    batches = [
        r
        for start in range(0, len(ids), 5)
        for r in annotated_masks(
            tiny_world, manifest, ids[start : start + 5], world_concepts, 16, progress=False, noise=settings
        )[0]
    ]
    exact, _ = annotated_masks(tiny_world, manifest, ids, world_concepts, 16, progress=False)
    for a, b, c in zip(whole, backwards[::-1], batches, strict=True):
        assert a.image_id == b.image_id == c.image_id and a.boxes == b.boxes == c.boxes
        np.testing.assert_array_equal(a.masks, b.masks)
        np.testing.assert_array_equal(a.masks, c.masks)
    assert any(not np.array_equal(a.masks, e.masks) for a, e in zip(whole, exact, strict=True))


def test_build_mask_store_records_the_noise(
    tiny_world: Path, manifest: pa.Table, world_concepts: dict[str, list[str]], tmp_path: Path
) -> None:
    from pipeline.concepts.store import write_concepts
    from pipeline.config.data import SubsetConfig
    from pipeline.data.subset import SUBSET_NAME, select_subset, write_subset
    from pipeline.masks.backends import build_mask_store
    from pipeline.masks.store import MaskStore

    write_subset(
        tmp_path / "subset" / SUBSET_NAME,
        select_subset(manifest, SubsetConfig(images_per_class=2, val_images_per_class=1)),
    )
    write_concepts(tmp_path / "concepts", world_concepts, {"source": "test"})

    def build(name: str, config: MasksConfig) -> MaskStore:
        build_mask_store(
            config,
            tiny_world,
            tmp_path / "subset",
            tmp_path / "concepts",
            tmp_path / name,
            tmp_path / "work",
            None,
            progress=False,
        )
        return MaskStore(tmp_path / name)

    default, zero, noisy = (
        build("default", MasksConfig()),
        build("zero", MasksConfig(annotated={"noise": 0.0, "seed": 5})),
        build("noisy", MasksConfig(annotated={"noise": 0.8})),
    )
    assert zero.provenance == default.provenance and zero.table.equals(default.table)
    np.testing.assert_array_equal(zero.concept_masks(zero.image_ids), default.concept_masks(default.image_ids))
    assert noisy.provenance["simulated_noise"] == 0.8 and noisy.provenance["noise_seed"] == 0
    assert noisy.flags().get("no_box", 0) > 0
    assert not np.array_equal(noisy.concept_masks(noisy.image_ids), default.concept_masks(default.image_ids))


def test_flag_of_a_missed_concept_is_not_usable() -> None:
    masks = np.zeros((2, 4, 4), dtype=bool)
    result = ImageMasks("img", "cls", ["a", "b"], masks, boxes=[0, None], missing=[False, True])
    assert result.flags() == ["no_box", "no_annotation"] and not result.usable()


# --- configuration ----------------------------------------------------------------------------


@pytest.mark.parametrize("noise", [-0.1, 1.5])
def test_noise_outside_unit_interval_is_refused_naming_the_key(tmp_path: Path, noise: float) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"masks": {"annotated": {"noise": noise, "seed": 0}}}))
    with pytest.raises(ConfigError, match=r"masks\.annotated\.noise: Input should be"):
        load_section(path, "masks", MasksConfig)


def test_annotated_config_keys(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"masks": {"annotated": {"nosie": 0.2}}}))
    with pytest.raises(ConfigError, match=r"masks\.annotated\.nosie: unknown key"):
        load_section(path, "masks", MasksConfig)
    path.write_text(yaml.safe_dump({"masks": {"annotated": {"noise": 0.3, "seed": 4}}}))
    assert load_section(path, "masks", MasksConfig).annotated == AnnotatedMasksConfig(noise=0.3, seed=4)
    assert MasksConfig().annotated == AnnotatedMasksConfig(noise=0.0, seed=0)
    with pytest.raises(ValueError, match="annotated.noise simulates"):
        MasksConfig(
            backend="grounded_sam",
            annotated={"noise": 0.2},
            grounded_sam={"grounding": {"checkpoint": "d.pth"}, "sam": {"checkpoint": "s.pth"}},
        )
    MasksConfig(
        backend="grounded_sam",
        annotated={"noise": 0.0},
        grounded_sam={"grounding": {"checkpoint": "d.pth"}, "sam": {"checkpoint": "s.pth"}},
    )
