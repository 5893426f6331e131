"""A model's own evaluation transform (timm ``pretrained_cfg``), for images and the masks that go with them.

timm evaluates a model by resizing the shorter image side to ``floor(size / crop_pct)`` with the
model's interpolation and cropping the centre ``size × size`` (``crop_mode: center``), or by
resizing both sides (``squash``). :class:`InputTransform` does the same on uint8 arrays with PIL
(which is what torchvision's ``Resize`` calls for PIL images), so an image-file dataset reaches the
model exactly as timm would feed it.

Concept masks are stored at a fixed square resolution, stretched from the original image (see
``cft masks``). :meth:`InputTransform.mask` maps such a mask through the *same* resize and crop as
its image, using the crop box in normalised image coordinates, so mask and pixels stay aligned.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from pipeline.utils.errors import CftError

_RESAMPLING = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}
DEFAULT_CROP_PCT = 0.875  # timm's default when a pretrained_cfg has none


class PreprocessingError(CftError):
    """A preprocessing spec this transform cannot reproduce; names the offending key."""


@dataclass(frozen=True)
class Geometry:
    """Where the model's input window lies in an image: resize to ``resized``, crop at ``top``/``left``."""

    resized: tuple[int, int]  # (height, width) after the resize
    top: int
    left: int
    size: int  # side of the square crop

    def box(self) -> tuple[float, float, float, float]:
        """The crop as (top, left, bottom, right), normalised to the original image's sides."""
        height, width = self.resized
        return (self.top / height, self.left / width, (self.top + self.size) / height, (self.left + self.size) / width)


@dataclass(frozen=True)
class InputTransform:
    size: int
    interpolation: str = "bicubic"
    crop_pct: float = DEFAULT_CROP_PCT
    crop_mode: str = "center"
    border: int = 0  # pixels trimmed from every side first (ObjectNet's frame)

    @classmethod
    def from_preprocessing(cls, preprocessing: dict[str, Any], border: int = 0) -> InputTransform:
        """From a model artifact's ``preprocessing`` (timm's resolved data config)."""
        input_size = list(preprocessing["input_size"])
        if input_size[-1] != input_size[-2]:
            raise PreprocessingError(f"input_size {input_size}: only square model inputs are supported")
        interpolation = preprocessing.get("interpolation") or "bilinear"
        if interpolation not in _RESAMPLING:
            raise PreprocessingError(f"interpolation {interpolation!r}: expected one of {sorted(_RESAMPLING)}")
        crop_mode = preprocessing.get("crop_mode") or "center"
        if crop_mode not in ("center", "squash"):
            raise PreprocessingError(f"crop_mode {crop_mode!r}: only 'center' and 'squash' are supported")
        return cls(
            int(input_size[-1]),
            interpolation,
            float(preprocessing.get("crop_pct") or DEFAULT_CROP_PCT),
            crop_mode,
            border,
        )

    def geometry(self, height: int, width: int) -> Geometry:
        """torchvision's Resize (shorter side, ``int`` of the longer) and CenterCrop (``round``; a side
        shorter than the crop, as with ``crop_pct > 1``, is zero-padded ``(size - side) // 2`` first)."""
        scale = math.floor(self.size / self.crop_pct)
        if self.crop_mode == "squash":
            resized = (scale, scale)
        elif height <= width:
            resized = (scale, int(scale * width / height))
        else:
            resized = (int(scale * height / width), scale)

        def offset(side: int) -> int:
            return int(round((side - self.size) / 2.0)) if side >= self.size else -((self.size - side) // 2)

        return Geometry(resized, offset(resized[0]), offset(resized[1]), self.size)

    def _trimmed(self, height: int, width: int) -> tuple[int, int, int, int]:
        """(top, bottom, left, right) of the image left after trimming ``border`` (timm's TrimBorder)."""
        return (
            min(self.border, height),
            max(self.border, height - self.border),
            min(self.border, width),
            max(self.border, width - self.border),
        )

    def image(self, image: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 at any size -> (size, size, 3) uint8, as timm's eval transform."""
        if self.border:
            top, bottom, left, right = self._trimmed(*image.shape[:2])
            image = image[top:bottom, left:right]
        height, width = image.shape[:2]
        geometry = self.geometry(height, width)
        picture = Image.fromarray(image)
        if (height, width) != geometry.resized:
            picture = picture.resize(
                (geometry.resized[1], geometry.resized[0]), resample=_RESAMPLING[self.interpolation]
            )
        cropped = picture.crop((geometry.left, geometry.top, geometry.left + self.size, geometry.top + self.size))
        return np.asarray(cropped.convert("RGB"))

    def mask(self, mask: np.ndarray, height: int, width: int) -> np.ndarray:
        """A mask stretched to any (h, w) from an (``height``, ``width``) image -> (size, size) bool,
        aligned with :meth:`image` of that image (nearest neighbour at pixel centres): the same
        border trim, resize and crop; padding (``crop_pct > 1``) is outside the mask."""
        trim_top, trim_bottom, trim_left, trim_right = self._trimmed(height, width)
        geometry = self.geometry(trim_bottom - trim_top, trim_right - trim_left)

        def sample(
            start: int, resized: int, trim_start: int, trim_end: int, full: int, cells: int
        ) -> tuple[np.ndarray, np.ndarray]:
            pixel = start + np.arange(self.size)  # crop pixel -> row/column of the resized image
            inside = (pixel >= 0) & (pixel < resized)
            position = (
                trim_start + (pixel + 0.5) / resized * (trim_end - trim_start)
            ) / full  # normalised in the original
            return np.clip(np.floor(position * cells).astype(np.int64), 0, cells - 1), inside

        rows, rows_inside = sample(geometry.top, geometry.resized[0], trim_top, trim_bottom, height, mask.shape[0])
        cols, cols_inside = sample(geometry.left, geometry.resized[1], trim_left, trim_right, width, mask.shape[1])
        return mask[rows[:, None], cols[None, :]].astype(bool) & rows_inside[:, None] & cols_inside[None, :]
