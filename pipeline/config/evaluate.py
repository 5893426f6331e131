"""``evaluate`` section (stages evaluate and report): the benchmarks and what is measured on them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, model_validator

from pipeline.benchmarks.kinds import (
    APART_KINDS,
    BENCHMARK_KINDS,
    CORRUPTION_KINDS,
    HARD_IMAGENET_ABLATIONS,
    IN9_VARIANTS,
    SPLIT_KINDS,
)
from pipeline.config import StrictConfig, load_section
from pipeline.config.models import resolve_models
from pipeline.corruptions.families import FAMILIES, KNOWN_CORRUPTIONS, SEVERITIES, family_of
from pipeline.data.world.splits import OFF_BY_DEFAULT, WORLD_BENCHMARKS

# World splits evaluated apart from the OOD means by default (`ood_mean: false`): the backgrounds
# split's variants without the object measure no robustness.
REPORTED_APART = ("backgrounds",)


def _each_once_of(field: str, names: list[str] | None, known: tuple[str, ...]) -> None:
    """``names`` (null: the default) must be distinct entries of ``known``."""
    if names is not None and (any(name not in known for name in names) or len(set(names)) != len(names)):
        raise ValueError(f"{field} {names}: each once, of {list(known)}")


class BenchmarkConfig(StrictConfig):
    """One evaluation set: a split of the prepared dataset, or a benchmark on disk (docs/real-data.md)."""

    kind: Literal[BENCHMARK_KINDS] = Field(  # type: ignore[valid-type]
        description="split: a split of the prepared dataset; corrupted: the benchmark `of` through ImageNet-C corruptions; the others: a dataset at `path` in its own layout"
    )
    path: str | None = Field(None, description="the benchmark's folder (gtsegs_ijcv.mat for imagenet_segmentation)")
    split: str | None = Field(
        None,
        description="kind split: the manifest split (null = the benchmark's name); waterbirds: train, val or test (null = test); hard_imagenet: train or val (null = val)",
    )
    limit: int | None = Field(
        None, ge=1, description="evaluate this many images, spread evenly over the benchmark (a quick look)"
    )
    ood_mean: bool | None = Field(
        None,
        description="count it in the out-of-distribution means; false: reported apart (e.g. a benchmark every model fails); null = true except for the kinds reported apart (corrupted, imagenet_c, imagenet9, waterbirds, hard_imagenet)",
    )
    of: BenchmarkConfig | None = Field(
        None, description="kind corrupted: the benchmark whose images are corrupted (its `limit` sets how many)"
    )
    corruptions: list[str] | None = Field(
        None,
        description="kind corrupted: corruptions and families (high, low) to apply; null = every corruption of `families`",
    )
    severities: list[Annotated[int, Field(ge=1, le=5)]] = Field(
        default_factory=lambda: list(SEVERITIES), min_length=1, description="kind corrupted: ImageNet-C severities"
    )
    families: dict[str, list[str]] = Field(
        default_factory=lambda: {name: list(names) for name, names in FAMILIES.items()},
        description="corruption families reported together (default: Yin et al.'s high and low frequency); for imagenet_c, folders in no family are reported as 'other'",
    )
    seed: int = Field(0, description="kind corrupted: seeds the corrupted images (the same for every model)")
    variants: list[str] | None = Field(
        None, min_length=1, description="kind imagenet9: the variant folders to read; null = all eight"
    )
    imagenet: str | None = Field(
        None, description="kind hard_imagenet: the ImageNet folder holding <split>/<wnid>/<image> (its images)"
    )
    ablations: list[str] | None = Field(
        None,
        min_length=1,
        description="kind hard_imagenet: ablations besides the image as it is; null = gray, gray_bbox, blur",
    )

    @model_validator(mode="after")
    def _path_for_datasets(self) -> BenchmarkConfig:
        corruption_fields = {"of", "corruptions", "severities", "seed"} & self.model_fields_set
        if self.kind == "corrupted":
            self._check_corrupted()
        elif corruption_fields:
            raise ValueError(f"{sorted(corruption_fields)} are for kind corrupted")
        if "families" in self.model_fields_set and self.kind not in CORRUPTION_KINDS:
            raise ValueError(f"`families` is for the corruption kinds {CORRUPTION_KINDS}")
        family_of(self.families)  # a corruption in two families is an error
        if self.variants is not None:
            self._check_variants()
        self._check_hard_imagenet()
        if self.kind == "corrupted":
            return self
        if self.kind == "split" and self.path is not None:
            raise ValueError("kind split reads the prepared dataset; `path` is for benchmarks on disk")
        if self.kind != "split" and self.path is None:
            raise ValueError(f"kind {self.kind} needs `path` (docs/real-data.md)")
        if self.split is not None and self.kind not in SPLIT_KINDS:
            raise ValueError(f"`split` is only for the kinds {list(SPLIT_KINDS)}")
        allowed = SPLIT_KINDS.get(self.kind)
        if self.split is not None and allowed is not None and self.split not in allowed:
            raise ValueError(f"kind {self.kind}: split {self.split!r} is not one of {list(allowed)}")
        return self

    def _check_hard_imagenet(self) -> None:
        if self.kind != "hard_imagenet":
            if self.imagenet is not None or self.ablations is not None:
                raise ValueError("`imagenet` and `ablations` are for kind hard_imagenet")
            return
        if self.imagenet is None:
            raise ValueError("kind hard_imagenet needs `imagenet`: the ImageNet folder holding <split>/<wnid>/<image>")
        _each_once_of("ablations", self.ablations, HARD_IMAGENET_ABLATIONS)

    def _check_variants(self) -> None:
        if self.kind != "imagenet9":
            raise ValueError("`variants` is for kind imagenet9")
        _each_once_of("variants", self.variants, IN9_VARIANTS)

    def _check_corrupted(self) -> None:
        if self.of is None:
            raise ValueError(
                "kind corrupted needs `of`, the benchmark to corrupt (e.g. of: {kind: split, split: test})"
            )
        if self.of.kind in (*CORRUPTION_KINDS, "imagenet_segmentation", "hard_imagenet"):
            raise ValueError(f"kind corrupted cannot corrupt kind {self.of.kind}")
        if self.path is not None or self.split is not None or self.limit is not None:
            raise ValueError("kind corrupted takes `path`, `split` and `limit` from `of` (set them there)")
        known = [name for names in self.families.values() for name in names]
        unknown = sorted({name for name in known if name not in KNOWN_CORRUPTIONS})
        if unknown:
            raise ValueError(
                f"families name corruptions {unknown} that kind corrupted cannot apply; known: {sorted(KNOWN_CORRUPTIONS)}"
            )
        wrong = sorted({name for name in self.applied_corruptions() if name not in KNOWN_CORRUPTIONS})
        if wrong:
            raise ValueError(
                f"corruptions {wrong}: neither a corruption {sorted(KNOWN_CORRUPTIONS)} nor a family {sorted(self.families)}"
            )
        if len(set(self.severities)) != len(self.severities):
            raise ValueError(f"severities lists one twice: {self.severities}")

    def in_ood_mean(self) -> bool:
        """Whether the report counts it in the out-of-distribution means (the kinds of APART_KINDS are
        reported apart from the distribution shifts unless ``ood_mean`` says otherwise; the world's
        backgrounds split is set apart in params.yaml and the default benchmarks, REPORTED_APART)."""
        return self.ood_mean if self.ood_mean is not None else self.kind not in APART_KINDS

    def applied_corruptions(self) -> list[str]:
        """kind corrupted: the corruptions applied, families spelled out (null: every family's)."""
        entries = self.corruptions if self.corruptions is not None else list(self.families)
        return list(dict.fromkeys(name for entry in entries for name in self.families.get(entry, [entry])))

    def corruption_pairs(self) -> list[tuple[str, int]]:
        """kind corrupted: every (corruption, severity) applied, corruption-major."""
        return [(name, severity) for name in self.applied_corruptions() for severity in self.severities]


class EvaluateConfig(StrictConfig):
    """``evaluate`` section: settings shared by every benchmark, and the benchmarks (one DVC stage each)."""

    benchmarks: dict[str, BenchmarkConfig] = Field(
        default_factory=lambda: {
            **{
                name: BenchmarkConfig(kind="split", ood_mean=False if name in REPORTED_APART else None)
                for name in WORLD_BENCHMARKS
                if name not in OFF_BY_DEFAULT
            },
            "corrupted": BenchmarkConfig(kind="corrupted", of=BenchmarkConfig(kind="split", split="test", limit=200)),
        },
        description="name -> benchmark; `dvc repro` runs evaluate@<benchmark>-<model> for each benchmark and model",
    )
    models: list[str] | None = Field(
        None,
        min_length=1,
        description="models to evaluate, each read from models/<name>: base and methods of finetune.methods; null = all of them (dvc.yaml needs the list written out)",
    )
    relevance: bool = Field(True, description="also measure relevance against object masks where a benchmark has them")
    relevance_target: Literal["predicted", "label"] = Field(
        "predicted", description="class whose relevance is measured (predicted: the segmentation protocol)"
    )
    in_distribution: str | None = Field(
        "test",
        description="benchmark whose accuracy on unseen classes measures forgetting; the others are out of distribution",
    )
    shortcut_tests: dict[str, str] = Field(
        default_factory=dict,
        description="name -> benchmark that takes one shortcut away (e.g. cue: cue_swapped); the metrics get <name>_drop = in-distribution accuracy minus its accuracy",
    )
    batch_size: int = Field(256, ge=1)
    relevance_batch_size: int = Field(
        64, ge=1, description="relevance passes cost ~8 forward passes; small batches are faster on CPU"
    )
    relevance_images: int | None = Field(
        500, ge=1, description="relevance metrics on the first N images of each benchmark; null = all"
    )
    overlay_images: int = Field(
        8, ge=0, description="images in each benchmark's relevance overlay (benchmarks with masks)"
    )
    workers: int | None = Field(
        None, ge=0, description="decoding processes; null = up to 8 CPU cores, 0 = in the main process"
    )
    part_size: int = Field(2048, ge=1, description="resume granularity: results are saved after every this many images")
    device: Literal["auto", "cpu", "cuda"] = "auto"

    @model_validator(mode="after")
    def _known_in_distribution(self) -> EvaluateConfig:
        if self.in_distribution is not None and self.in_distribution not in self.benchmarks:
            raise ValueError(
                f"in_distribution {self.in_distribution!r} is not one of the benchmarks {sorted(self.benchmarks)}"
            )
        unknown = {
            name: benchmark for name, benchmark in self.shortcut_tests.items() if benchmark not in self.benchmarks
        }
        if unknown:
            raise ValueError(
                f"shortcut_tests {unknown} name benchmark(s) not in the benchmarks {sorted(self.benchmarks)}: list only evaluated benchmarks (or none: {{}})"
            )
        if self.shortcut_tests and self.in_distribution is None:
            raise ValueError("shortcut_tests compare with the in-distribution accuracy: set in_distribution")
        if self.models is not None and len(set(self.models)) != len(self.models):
            raise ValueError(f"models lists a model twice: {self.models}")
        return self


def load_evaluate(path: str | Path) -> EvaluateConfig:
    """The ``evaluate`` section, with ``evaluate.models`` checked against ``finetune.methods``."""
    config = load_section(path, "evaluate", EvaluateConfig)
    return config.model_copy(update={"models": resolve_models(path, "evaluate", config.models)})
