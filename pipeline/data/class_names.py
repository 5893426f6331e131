"""Readable class names for prompts: ImageNet WordNet ids become words, other names pass through.

The 1000 ImageNet-1k ids and their names come from timm's packaged ``ImageNetInfo`` (the standard
list), so no copy is kept here.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

from pipeline.utils.errors import CftError

WORDNET_ID = re.compile(r"^n\d{8}$")


@lru_cache(maxsize=1)
def _imagenet_descriptions() -> dict[str, str]:
    from timm.data import ImageNetInfo

    info = ImageNetInfo("imagenet-1k")
    return dict(zip(info.label_names(), info.label_descriptions(), strict=True))


def imagenet_classes() -> list[str]:
    """The 1000 ImageNet-1k WordNet ids, in the standard class-index order."""
    return list(_imagenet_descriptions())


def readable_name(class_name: str) -> str:
    """``n01443537`` -> ``goldfish`` (the first synonym); ``school_bus`` -> ``school bus``."""
    if WORDNET_ID.match(class_name):
        description = _imagenet_descriptions().get(class_name)
        if description is None:
            raise CftError(f"unknown WordNet id {class_name!r}: not an ImageNet-1k class")
        return description.split(",")[0].strip()
    return class_name.replace("_", " ").strip()


def read_class_list(source: str) -> list[str]:
    """``imagenet-1k`` or a text file with one class name per line (blank lines and # comments skipped)."""
    if source == "imagenet-1k":
        return imagenet_classes()
    path = Path(source)
    if not path.is_file():
        raise CftError(f"{path}: class list not found (give a text file, one class per line, or 'imagenet-1k')")
    names = [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if not names or duplicates:
        raise CftError(f"{path}: {'no class names' if not names else f'duplicate class names {duplicates}'}")
    return names


@lru_cache(maxsize=1)
def _imagenet_definitions() -> dict[str, str]:
    from timm.data import ImageNetInfo

    info = ImageNetInfo("imagenet-1k")
    return {
        name: info.index_to_description(index, detailed=True).split(":", 1)[-1].strip()
        for index, name in enumerate(info.label_names())
    }


def readable_names(class_names: list[str]) -> dict[str, str]:
    """Class name -> readable name; names that would collide (ImageNet's two "crane"s) get a short definition."""
    names = {name: readable_name(name) for name in class_names}
    seen: dict[str, int] = {}
    for readable in names.values():
        seen[readable] = seen.get(readable, 0) + 1
    for name, readable in names.items():
        if seen[readable] > 1 and WORDNET_ID.match(name):
            definition = " ".join(_imagenet_definitions()[name].split()[:6]).rstrip(",;")
            names[name] = f"{readable} ({definition})"
    return names
