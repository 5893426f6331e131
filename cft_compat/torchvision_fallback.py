"""Pure-PyTorch stand-ins for torchvision's compiled ops, for machines where they fail to load.

On some package registries the only torchvision wheel matching a CPU build of torch is a CUDA
build whose ``_C`` extension cannot load. torchvision then fails at import time with
``operator torchvision::nms does not exist``, which breaks ``import timm``, ``segment_anything``
and ``groundingdino``. Set-up detects that case (``python -m cft_compat.torchvision_fallback
install``) and drops a ``.pth`` file into site-packages that installs :class:`_ImportHook`.
The hook only acts when torchvision is first imported *and* its compiled ops really fail to
load, so a working torchvision is never touched.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import subprocess
import sys
import sysconfig
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

DISABLE_ENV = "CFT_TORCHVISION_FALLBACK"
PTH_NAME = "zz_cft_torchvision_fallback.pth"  # .pth files run alphabetically: after editable finders
PTH_LINE = "import cft_compat.torchvision_fallback as _cft_tv; _cft_tv.install_import_hook()\n"

_fallback_library: Any = None  # keeps the torch.library registration alive


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression with torchvision's semantics.

    Boxes are ``(x1, y1, x2, y2)``; returns indices of kept boxes sorted by decreasing score.
    A box is suppressed when its IoU with a kept, higher-scoring box is *greater* than the threshold.
    """
    import torch

    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.long, device=boxes.device)
    order = torch.argsort(scores, descending=True, stable=True)
    ordered = boxes[order].to(torch.float64)
    x1, y1, x2, y2 = ordered.unbind(1)
    areas = (x2 - x1) * (y2 - y1)
    inter_w = (torch.minimum(x2[:, None], x2[None, :]) - torch.maximum(x1[:, None], x1[None, :])).clamp(min=0)
    inter_h = (torch.minimum(y2[:, None], y2[None, :]) - torch.maximum(y1[:, None], y1[None, :])).clamp(min=0)
    inter = inter_w * inter_h
    iou = inter / (areas[:, None] + areas[None, :] - inter)
    overlaps = (iou > iou_threshold).cpu()
    suppressed = torch.zeros(len(order), dtype=torch.bool)
    keep: list[int] = []
    for i in range(len(order)):
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= overlaps[i]
    return order[torch.tensor(keep, dtype=torch.long, device=order.device)]


def _quantized_nms_unavailable(*_args: Any) -> Any:
    raise NotImplementedError(
        "torchvision::qnms is not available: torchvision's compiled ops failed to load and "
        "cft's pure-PyTorch fallback only provides nms."
    )


def compiled_ops_load(torchvision_dir: Path) -> bool:
    """Whether torchvision's compiled extension in ``torchvision_dir`` loads beside this torch."""
    import torch

    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        candidate = torchvision_dir / f"_C{suffix}"
        if candidate.exists():
            try:
                torch.ops.load_library(str(candidate))
                return True
            except (OSError, RuntimeError, ImportError):
                return False
    return False


def register_fallback_ops() -> None:
    """Define ``torchvision::nms`` (and ``qnms``, which raises) as pure-PyTorch CPU/CUDA kernels."""
    global _fallback_library
    if _fallback_library is not None:
        return
    import torch

    library = torch.library.Library("torchvision", "DEF")
    library.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    library.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    for dispatch_key in ("CPU", "CUDA"):
        library.impl("nms", nms, dispatch_key)
        library.impl("qnms", _quantized_nms_unavailable, dispatch_key)
    _fallback_library = library


class _PatchingLoader(importlib.abc.Loader):
    """Runs torchvision's own loader, then tells torchvision that its (fallback) ops exist."""

    def __init__(self, wrapped: importlib.abc.Loader) -> None:
        self._wrapped = wrapped

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._wrapped.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._wrapped.exec_module(module)
        extension = sys.modules["torchvision.extension"]
        extension._has_ops = lambda: True  # type: ignore[attr-defined]


class _ImportHook(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if fullname != "torchvision":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec("torchvision")
        if spec is None or spec.loader is None or not spec.submodule_search_locations:
            return spec
        if compiled_ops_load(Path(list(spec.submodule_search_locations)[0])):
            return spec
        register_fallback_ops()
        spec.loader = _PatchingLoader(spec.loader)
        return spec


def install_import_hook() -> None:
    """Called from the ``.pth`` file at interpreter start-up; cheap (imports nothing heavy)."""
    if os.environ.get(DISABLE_ENV) == "0" or "torchvision" in sys.modules:
        return
    if not any(isinstance(finder, _ImportHook) for finder in sys.meta_path):
        sys.meta_path.insert(0, _ImportHook())


def torchvision_ops_work(python: str = sys.executable) -> bool:
    """Whether torchvision's own nms runs in a fresh interpreter *without* the fallback hook."""
    probe = "import torch, torchvision.ops; torchvision.ops.nms(torch.zeros(1, 4), torch.zeros(1), 0.5)"
    env = {**os.environ, DISABLE_ENV: "0"}
    result = subprocess.run([python, "-c", probe], env=env, capture_output=True, text=True)
    return result.returncode == 0


def pth_path() -> Path:
    return Path(sysconfig.get_paths()["purelib"]) / PTH_NAME


def install() -> str:
    """Install the hook's ``.pth`` only if torchvision's compiled ops are broken; idempotent."""
    target = pth_path()
    if torchvision_ops_work():
        if target.exists():
            target.unlink()
            return f"torchvision ops load natively; removed {target}"
        return "torchvision ops load natively; no fallback needed"
    target.write_text(PTH_LINE)
    return f"torchvision's compiled ops fail to load; installed pure-PyTorch fallback hook at {target}"


if __name__ == "__main__":
    if sys.argv[1:] != ["install"]:
        sys.exit("usage: python -m cft_compat.torchvision_fallback install")
    print(install())
