"""``evaluate`` section (stages evaluate and report): the benchmarks and what is measured on them."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from pipeline.benchmarks.kinds import BENCHMARK_KINDS
from pipeline.config import ConfigError, StrictConfig, load_section, read_params
from pipeline.data.world.splits import OFF_BY_DEFAULT, WORLD_BENCHMARKS


class BenchmarkConfig(StrictConfig):
    """One evaluation set: a split of the prepared dataset, or a benchmark on disk (docs/real-data.md)."""

    kind: Literal[BENCHMARK_KINDS] = Field(  # type: ignore[valid-type]
        description="split: a split of the prepared dataset; the others: a dataset at `path` in its own layout"
    )
    path: str | None = Field(None, description="the benchmark's folder (gtsegs_ijcv.mat for imagenet_segmentation)")
    split: str | None = Field(None, description="kind split: the manifest split; null = the benchmark's name")
    limit: int | None = Field(
        None, ge=1, description="evaluate this many images, spread evenly over the benchmark (a quick look)"
    )
    ood_mean: bool = Field(
        True,
        description="count it in the out-of-distribution means; false: reported apart (e.g. a benchmark every model fails)",
    )

    @model_validator(mode="after")
    def _path_for_datasets(self) -> BenchmarkConfig:
        if self.kind == "split" and self.path is not None:
            raise ValueError("kind split reads the prepared dataset; `path` is for benchmarks on disk")
        if self.kind != "split" and self.path is None:
            raise ValueError(f"kind {self.kind} needs `path` (docs/real-data.md)")
        if self.kind != "split" and self.split is not None:
            raise ValueError("`split` is only for kind split")
        return self


class EvaluateConfig(StrictConfig):
    """``evaluate`` section: settings shared by every benchmark, and the benchmarks (one DVC stage each)."""

    benchmarks: dict[str, BenchmarkConfig] = Field(
        default_factory=lambda: {
            name: BenchmarkConfig(kind="split") for name in WORLD_BENCHMARKS if name not in OFF_BY_DEFAULT
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
    methods = (read_params(path).get("finetune") or {}).get("methods") or []
    if config.models is None:
        config = config.model_copy(update={"models": ["base", *methods]})
    assert config.models is not None
    unknown = [name for name in config.models if name != "base" and name not in methods]
    if unknown:
        raise ConfigError(f"{path}: evaluate.models {unknown} are neither 'base' nor in finetune.methods {methods}")
    return config
