"""Fine-tuning inputs on the tiny world, and counting (and interrupting) fine-tuning steps, as a
kill would stop a run mid-epoch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pipeline.training import finetune as finetuning


def finetune_inputs(
    tiny_world: Path, root: Path, images_per_class: int, val_images_per_class: int = 1
) -> finetuning.FinetuneInputs:
    """In ``root``: a subset (``subset/subset.parquet``), the world's concept masks (``masks``) and
    a random-weight tiny base model (``base``, seed 0), as `cft finetune` reads them."""
    from pipeline.concepts.store import catalog_concepts
    from pipeline.config.base import BaseConfig
    from pipeline.config.concepts import ConceptsConfig
    from pipeline.config.data import SubsetConfig
    from pipeline.data.manifest import classes_of, read_manifest
    from pipeline.data.subset import SUBSET_NAME, select_subset, subset_ids, write_subset
    from pipeline.masks.annotated import annotated_masks
    from pipeline.masks.store import write_mask_store
    from pipeline.models.factory import create_model, preprocessing_of, save_model_artifact
    from tests.helpers.tiny import TINY_BASE

    manifest = read_manifest(tiny_world / "manifest.parquet")
    subset = select_subset(
        manifest, SubsetConfig(images_per_class=images_per_class, val_images_per_class=val_images_per_class)
    )
    write_subset(root / "subset" / SUBSET_NAME, subset)
    classes = classes_of(manifest)
    concepts, _ = catalog_concepts(ConceptsConfig(), tiny_world, classes)
    results, size = annotated_masks(
        tiny_world, manifest, subset_ids(subset, "finetune"), concepts, None, progress=False
    )
    write_mask_store(root / "masks", results, size, "annotated")
    config = BaseConfig(**TINY_BASE)
    torch.manual_seed(0)
    model = create_model(config, len(classes), image_size=32)
    save_model_artifact(root / "base", model, config, classes, preprocessing_of(model, 32))
    return finetuning.FinetuneInputs(
        base_model=root / "base", dataset=tiny_world, subset=root / "subset" / SUBSET_NAME, masks=root / "masks"
    )


class Interrupted(Exception):
    pass


def count_steps(monkeypatch: pytest.MonkeyPatch, stop_after: int | None = None) -> dict[str, int]:
    """Count fine-tuning steps (one ``joint_augment`` call each) in the returned ``{"n": ...}``;
    with ``stop_after``, raise inside the loop after that many, as a kill would stop it mid-epoch."""
    original = finetuning.joint_augment
    calls = {"n": 0}

    def counting(*args: object, **kwargs: object) -> object:
        calls["n"] += 1
        if stop_after is not None and calls["n"] > stop_after:
            raise Interrupted
        return original(*args, **kwargs)

    monkeypatch.setattr(finetuning, "joint_augment", counting)
    return calls
