"""A model's own evaluation transform on uint8 arrays and masks (pipeline/data/preprocess.py), against timm."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from timm.data import create_transform, resolve_model_data_config

from pipeline.data.preprocess import DEFAULT_CROP_PCT, Geometry, InputTransform, PreprocessingError

SHAPES = {"portrait": (50, 40), "landscape": (37, 61), "square": (45, 45)}
IDENTITY = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}  # timm's output is then ToTensor: uint8 / 255


def _pixels(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def timm_eval(image: np.ndarray, config: dict, border: int = 0) -> torch.Tensor:
    """timm's own evaluation transform of ``image`` (PIL path, torchvision Resize/CenterCrop), unnormalised."""
    transform = create_transform(**{**config, **IDENTITY}, crop_border_pixels=border or None, is_training=False)
    return transform(Image.fromarray(image))


def as_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(image)).permute(2, 0, 1).float().div(255)


@pytest.fixture(scope="module")
def real_configs() -> dict[str, dict]:
    """timm's resolved data configs of real models (built on the meta device: no weights, no init cost)."""
    configs = {}
    for name in [
        "vit_base_patch16_224.augreg2_in21k_ft_in1k",
        "deit3_base_patch16_224",
        "convnextv2_base",
        "resnet18.tv_in1k",
    ]:
        with torch.device("meta"):
            model = timm.create_model(name, pretrained=False)
        configs[name] = resolve_model_data_config(model)
    return configs


@pytest.mark.parametrize(
    ("name", "interpolation", "crop_pct"),
    [
        ("vit_base_patch16_224.augreg2_in21k_ft_in1k", "bicubic", 0.9),
        ("deit3_base_patch16_224", "bicubic", 0.9),
        ("convnextv2_base", "bicubic", 0.875),
        ("resnet18.tv_in1k", "bilinear", 0.875),
    ],
)
def test_from_preprocessing_reads_timm_configs(
    real_configs: dict[str, dict], name: str, interpolation: str, crop_pct: float
) -> None:
    transform = InputTransform.from_preprocessing(real_configs[name])
    assert transform == InputTransform(224, interpolation, crop_pct, "center", 0)
    assert InputTransform.from_preprocessing(real_configs[name], border=3).border == 3


@pytest.mark.parametrize("name", ["vit_base_patch16_224.augreg2_in21k_ft_in1k", "convnextv2_base", "resnet18.tv_in1k"])
@pytest.mark.parametrize("shape", [(300, 260), (260, 301)], ids=["portrait", "landscape"])
def test_image_equals_timm_eval_transform_for_real_configs(
    real_configs: dict[str, dict], name: str, shape: tuple[int, int]
) -> None:
    image = _pixels(*shape, seed=7)
    config = real_configs[name]
    ours = InputTransform.from_preprocessing(config).image(image)
    assert ours.shape == (224, 224, 3) and ours.dtype == np.uint8
    assert torch.equal(as_tensor(ours), timm_eval(image, config))


@pytest.mark.parametrize("shape", list(SHAPES.values()), ids=list(SHAPES))
@pytest.mark.parametrize(
    ("interpolation", "crop_pct", "crop_mode"),
    [
        ("bicubic", 0.875, "center"),
        ("bilinear", 0.875, "center"),
        ("bicubic", 0.9, "center"),
        ("bilinear", 0.9, "center"),
        ("bicubic", 1.0, "center"),
        ("bilinear", 1.0, "center"),
        ("bicubic", 0.9, "squash"),
        ("bicubic", 1.0, "squash"),
        ("bicubic", 1.15, "center"),  # volo_d*_448: the resized image is smaller than the crop (padded)
    ],
)
def test_image_equals_timm_eval_transform(
    shape: tuple[int, int], interpolation: str, crop_pct: float, crop_mode: str
) -> None:
    image = _pixels(*shape)
    config = {"input_size": (3, 20, 20), "interpolation": interpolation, "crop_pct": crop_pct, "crop_mode": crop_mode}
    ours = InputTransform.from_preprocessing(config).image(image)
    assert ours.shape == (20, 20, 3)
    assert torch.equal(as_tensor(ours), timm_eval(image, config))


@pytest.mark.parametrize("border", [2, 5])
def test_border_is_trimmed_first_like_timm(border: int) -> None:
    image = _pixels(47, 58, seed=3)
    image[:border] = image[-border:] = 0  # a frame of another colour that must not reach the model
    image[:, :border] = image[:, -border:] = 0
    config = {"input_size": (3, 24, 24), "interpolation": "bicubic", "crop_pct": 1.0}
    transform = InputTransform.from_preprocessing(config, border=border)
    ours = transform.image(image)
    np.testing.assert_array_equal(
        ours, InputTransform.from_preprocessing(config).image(image[border:-border, border:-border])
    )
    assert torch.equal(as_tensor(ours), timm_eval(image, config, border=border))


def test_geometry_hand_computed() -> None:
    # 224 / 0.875 = 256: landscape 300x400 -> 256 x int(256 * 400 / 300) = 341; top 16, left round(58.5) = 58
    assert InputTransform(224, "bicubic", 0.875).geometry(300, 400) == Geometry((256, 341), 16, 58, 224)
    # floor(224 / 0.9) = 248: portrait 500x375 -> int(248 * 500 / 375) = 330 x 248; top 53, left 12
    assert InputTransform(224, "bicubic", 0.9).geometry(500, 375) == Geometry((330, 248), 53, 12, 224)
    assert InputTransform(224, "bicubic", 0.9, "squash").geometry(500, 375) == Geometry((248, 248), 12, 12, 224)
    assert InputTransform(224, "bilinear", 1.0).geometry(224, 300) == Geometry((224, 300), 0, 38, 224)
    # floor(448 / 1.15) = 389 < 448: torchvision pads (448 - 389) // 2 = 29 first
    assert InputTransform(448, "bicubic", 1.15).geometry(400, 400) == Geometry((389, 389), -29, -29, 448)
    top, left, bottom, right = InputTransform(224, "bicubic", 0.9).geometry(500, 375).box()
    assert (top, left, bottom, right) == pytest.approx((53 / 330, 12 / 248, 277 / 330, 236 / 248))


def _changes_nearby(a: np.ndarray) -> np.ndarray:
    """Pixels with a differently valued 8-neighbour (the 1-px boundary on both sides)."""
    padded = np.pad(a, 1, mode="edge")
    out = np.zeros_like(a, dtype=bool)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            out |= padded[1 + dy : 1 + dy + a.shape[0], 1 + dx : 1 + dx + a.shape[1]] != a
    return out


@pytest.mark.parametrize(
    ("shape", "transform"),
    [
        ((120, 90), InputTransform(40, "bicubic", 0.875)),
        ((90, 130), InputTransform(40, "bilinear", 0.9)),
        ((100, 100), InputTransform(40, "bicubic", 1.0)),
        ((90, 130), InputTransform(40, "bicubic", 0.9, "squash")),
        ((120, 90), InputTransform(40, "bicubic", 1.15)),  # padded crop: the padding is not the object
        ((120, 90), InputTransform(40, "bicubic", 0.875, border=7)),  # the frame is trimmed off the mask too
    ],
    ids=["portrait", "landscape", "square", "squash", "padded", "border"],
)
def test_mask_is_aligned_with_image(shape: tuple[int, int], transform: InputTransform) -> None:
    height, width = shape
    image = np.zeros((height, width, 3), dtype=np.uint8)
    image[..., 2] = 255  # blue background
    # a red rectangle that crosses the crop window's edges and touches the right side (padding, frame)
    top, bottom, left, right = height // 8, height * 3 // 4, width // 3, width
    image[top:bottom, left:right] = (255, 0, 0)
    if transform.border:
        image[: transform.border] = image[-transform.border :] = (0, 255, 0)
        image[:, : transform.border] = image[:, -transform.border :] = (0, 255, 0)
    object_mask = np.zeros((height, width), dtype=bool)
    object_mask[top:bottom, left:right] = True
    if transform.border:
        object_mask[: transform.border] = object_mask[-transform.border :] = False
        object_mask[:, : transform.border] = object_mask[:, -transform.border :] = False
    stored = (
        np.asarray(Image.fromarray(object_mask.astype(np.uint8) * 255).resize((64, 64), Image.Resampling.NEAREST)) > 0
    )

    mapped = transform.mask(stored, height, width)
    pixels = transform.image(image)
    red = (pixels[..., 0] > 127) & (pixels[..., 1] < 128) & (pixels[..., 2] < 128)
    assert mapped.shape == red.shape == (transform.size, transform.size) and mapped.dtype == bool
    assert 0.05 < red.mean() < 0.95  # the rectangle is partly inside the crop
    if transform.border:
        assert not ((pixels[..., 1] > 127) & (pixels[..., 0] < 128)).any()  # no green frame left
    wrong = mapped != red
    assert not (wrong & ~_changes_nearby(red)).any(), f"{wrong.sum()} mask pixels off by more than 1 px"


def test_mask_of_full_and_empty_masks() -> None:
    transform = InputTransform(16, "bicubic", 0.875)
    assert transform.mask(np.ones((64, 64), dtype=bool), 30, 50).all()
    assert not transform.mask(np.zeros((64, 64), dtype=bool), 30, 50).any()
    padded = InputTransform(16, "bicubic", 1.3).mask(np.ones((64, 64), dtype=bool), 30, 30)
    geometry = InputTransform(16, "bicubic", 1.3).geometry(30, 30)
    inside = slice(-geometry.top, -geometry.top + geometry.resized[0])
    assert padded[inside, inside].all() and padded.sum() == geometry.resized[0] * geometry.resized[1]


def test_defaults_and_unsupported_specs_name_the_key() -> None:
    transform = InputTransform.from_preprocessing({"input_size": [3, 64, 64]})
    assert (transform.size, transform.interpolation, transform.crop_pct, transform.crop_mode) == (
        64,
        "bilinear",
        DEFAULT_CROP_PCT,
        "center",
    )
    with pytest.raises(PreprocessingError, match=r"^crop_mode 'border'"):
        InputTransform.from_preprocessing({"input_size": (3, 224, 224), "crop_mode": "border"})
    with pytest.raises(PreprocessingError, match=r"^input_size \[3, 224, 256\]: only square"):
        InputTransform.from_preprocessing({"input_size": (3, 224, 256)})
    with pytest.raises(PreprocessingError, match=r"^interpolation 'area'"):
        InputTransform.from_preprocessing({"input_size": (3, 224, 224), "interpolation": "area"})
    assert issubclass(PreprocessingError, ValueError)  # stages turn it into a clean exit 2
