"""`cft concepts`: the concepts artifact (class -> visual parts) from the ``concepts`` section."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from pipeline.config import load_section
from pipeline.config.concepts import ConceptsConfig
from pipeline.utils.atomic import atomic_directory
from pipeline.utils.dvc_inputs import check_declared
from stages.common import PARAMS_OPTION, user_errors


def concepts(
    params: Path = PARAMS_OPTION,
    data: Path = typer.Option(Path("data/prepared"), help="dataset artifact from `cft prepare` (its classes)"),
    classes: str | None = typer.Option(
        None, help="instead of the dataset's classes: 'imagenet-1k' or a text file, one class per line"
    ),
    out: Path = typer.Option(Path("data/concepts"), help="concepts artifact directory (fully rewritten)"),
) -> None:
    """Write the concepts of every class: from a catalog (`source: catalog`) or an LLM (`source: llm`)."""
    with user_errors():
        config = load_section(params, "concepts", ConceptsConfig)
        check_declared({"concepts.catalog": config.catalog}, params)
        from pipeline.concepts.store import catalog_concepts, write_concepts
        from pipeline.data.class_names import read_class_list

        if classes is not None:
            class_list = read_class_list(classes)
        else:
            from pipeline.data.manifest import classes_of, read_manifest

            class_list = classes_of(read_manifest(data / "manifest.parquet"))
        stats = None
        if config.source == "catalog":
            chosen, origin = catalog_concepts(config, data, class_list)
            provenance: dict[str, object] = {"source": "catalog", "catalog": origin}
        else:
            os.environ.setdefault(
                "LITELLM_LOCAL_MODEL_COST_MAP", "True"
            )  # no network fetch of a price list we never use
            chosen, provenance, stats = _llm_concepts(config, class_list)
            origin = config.llm.model
        with atomic_directory(out) as staging:
            write_concepts(staging, chosen, provenance, stats)
    total = sum(len(names) for names in chosen.values())
    typer.echo(f"concepts {out}: {total} concepts for {len(chosen)} classes from {origin}")


def _llm_concepts(
    config: ConceptsConfig, class_list: list[str]
) -> tuple[dict[str, list[str]], dict[str, object], dict[str, object]]:
    import datetime
    import time

    from pipeline.concepts.llm import prompt_hash, propose_concepts
    from pipeline.data.class_names import readable_names

    started = time.perf_counter()
    results, hits = propose_concepts(readable_names(class_list), config.llm, config.filters)
    seconds = time.perf_counter() - started
    requests = sum(r.requests for r in results.values())
    fallbacks = [name for name, r in results.items() if r.fallback]
    stats = {
        name: {
            **r.report.as_dict(),
            "requests": r.requests,
            "retries": r.retries,
            "fallback": r.fallback,
            "errors": r.errors,
        }
        for name, r in results.items()
    }
    provenance = {
        "source": "llm",
        "model": config.llm.model,
        "api_base": config.llm.api_base,
        "prompt_sha256": prompt_hash(),
        "temperature": config.llm.temperature,
        "samples": config.llm.samples,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    typer.echo(f"{'class':<28} {'proposed':>8} {'kept':>5} {'requests':>8} {'retries':>7}")
    for name, r in list(results.items())[:20]:
        typer.echo(
            f"{name[:28]:<28} {r.report.proposed:>8} {r.report.kept:>5} {r.requests:>8} {r.retries:>7}{'  fallback' if r.fallback else ''}"
        )
    if len(results) > 20:
        typer.echo(f"... and {len(results) - 20} more classes (all in concepts.json, filter_stats)")
    typer.echo(
        f"{len(results)} classes in {seconds:.1f} s: {requests} requests, {hits} answers from the cache, {len(fallbacks)} fallbacks {fallbacks[:10]}"
    )
    return {name: r.concepts for name, r in results.items()}, provenance, stats
