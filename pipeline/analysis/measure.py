"""`cft analyze`'s measurements: every model over the same probe images, clean and corrupted,
layer by layer, compared with the base model.

Per model, input (clean, corrupted) and layer:

- attention (ViTs): entropy and mean attention distance per head, and the class token's attention
  share on object patches where the probe images have object masks;
- knowledge evolution: logit-lens accuracy, the final norm and head applied to the layer's output;
- sparsity: share of active (> 0) MLP hidden units, Hoyer sparsity of the output tokens;
- representations: linear CKA with the base model at the same layer, and between the clean and
  corrupted inputs within the model. Each image is represented by its mean output token (a
  (images, width) matrix per layer), so the comparison costs the same at any token count.

And a top-k sparse autoencoder trained on the base model's clean output tokens at one layer, then
tested on every model's tokens there: its reconstruction error (fraction of variance unexplained)
and the overlap of the features that fire with those firing on the base model. A base dictionary
that no longer fits a fine-tuned model's tokens is the "fundamental change" the study looks for.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from pipeline.analysis.attention import attention_entropy, attention_on_mask, mean_attention_distance, patch_coverage
from pipeline.analysis.probes import ModelProbe
from pipeline.analysis.sae import TopKSAEConfig, feature_overlap, train_sae
from pipeline.analysis.similarity import linear_cka
from pipeline.analysis.sparsity import active_share, hoyer_sparsity
from pipeline.utils.device import autocast
from pipeline.utils.distributed import Ranks

INPUTS = ("clean", "corrupted")


@dataclass
class ProbeSet:
    """The probe images (uint8 (N, S, S, 3)), clean and corrupted, their labels and object masks."""

    clean: np.ndarray
    corrupted: np.ndarray
    labels: np.ndarray
    masks: np.ndarray | None  # (N, S, S) bool, or None when the dataset has none


@dataclass
class ModelReadout:
    """One model on one input: per-layer statistics and the tensors kept for comparisons."""

    layers: list[dict[str, float]]
    heads: list[dict[str, Any]]
    pooled: list[Tensor]  # per layer (images, width): the mean output token of each image
    sae_tokens: Tensor  # (tokens, width) at the SAE layer, the same sampled positions for every model
    accuracy: float


@dataclass
class Analysis:
    layers: list[dict[str, Any]] = field(default_factory=list)  # one row per model, input and layer
    heads: list[dict[str, Any]] = field(default_factory=list)  # one row per model, input, layer and head
    models: dict[str, dict[str, float]] = field(default_factory=dict)  # model -> summary numbers
    notes: list[str] = field(default_factory=list)


def read_model(
    model: nn.Module,
    normalize: Callable[[Tensor], Tensor],
    images: np.ndarray,
    labels: np.ndarray,
    masks: np.ndarray | None,
    batch_size: int,
    device: torch.device,
    sae_layer: int,
    sae_positions: Tensor,
) -> ModelReadout:
    """Stream ``images`` through ``model`` in batches, accumulating each layer's statistics."""
    probe = ModelProbe(model)
    depth = len(probe.layers)
    sums: list[dict[str, float]] = [{} for _ in range(depth)]
    head_sums: list[dict[str, Tensor]] = [{} for _ in range(depth)]
    pooled: list[list[Tensor]] = [[] for _ in range(depth)]
    sae_rows: list[Tensor] = []
    correct, seen = 0, 0
    for start in range(0, len(images), batch_size):
        stop = min(start + batch_size, len(images))
        x = normalize(torch.from_numpy(images[start:stop]).to(device))
        y = torch.from_numpy(labels[start:stop]).to(device)
        weight = stop - start
        with torch.no_grad(), probe.capture() as captured, autocast(device):
            logits = model(x)
        correct += int((logits.argmax(dim=1) == y).sum())
        seen += weight
        coverage = None
        if masks is not None and probe.has_attention:
            coverage = patch_coverage(torch.from_numpy(masks[start:stop]), probe.grid).to(device)
        for layer in range(depth):
            tokens = captured.tokens[layer]
            statistics = {
                "active_share": active_share(captured.hidden[layer]),
                "hoyer": hoyer_sparsity(tokens),
            }
            lens = probe.logit_lens(layer, captured)
            if lens is not None:
                statistics["logit_lens_accuracy"] = float((lens.argmax(dim=1) == y).float().mean())
            if probe.has_attention:
                attention = captured.attention[layer]
                per_head = {
                    "attention_entropy": attention_entropy(attention),
                    "attention_distance": mean_attention_distance(
                        attention, probe.grid, probe.patch_pixels, probe.prefix_tokens
                    ),
                }
                if coverage is not None and probe.prefix_tokens > 0:
                    per_head["object_attention"] = attention_on_mask(attention, coverage, probe.prefix_tokens)
                for key, values in per_head.items():
                    statistics[key] = float(values.mean())
                    head_sums[layer][key] = head_sums[layer].get(key, 0) + values.double().cpu() * weight
            for key, value in statistics.items():
                sums[layer][key] = sums[layer].get(key, 0.0) + value * weight
            pooled[layer].append(tokens.mean(dim=1).cpu())
        sae_rows.append(captured.tokens[sae_layer].cpu())
    layers = [{key: value / seen for key, value in per.items()} for per in sums]
    heads = [
        {"layer": layer, "head": head, **{key: float(values[head]) / seen for key, values in per.items()}}
        for layer, per in enumerate(head_sums)
        if per
        for head in range(len(next(iter(per.values()))))
    ]
    tokens = torch.cat(sae_rows).flatten(0, 1)
    return ModelReadout(layers, heads, [torch.cat(p) for p in pooled], tokens[sae_positions], correct / seen)


def analyze(
    models: dict[str, tuple[nn.Module, Callable[[Tensor], Tensor]]],
    probes: ProbeSet,
    batch_size: int,
    device: torch.device,
    sae: dict[str, Any],
    seed: int,
    ranks: Ranks | None = None,
) -> Analysis | None:
    """Every model (the first is the reference, the base model) on the clean and corrupted probes.

    Under torchrun (``ranks`` from :func:`pipeline.utils.distributed.session`) the passes (model ×
    input) are shared: rank r reads passes r, r + N, ...; the main rank gathers every readout,
    trains the SAE, compares and returns the analysis (the one a single process computes: each
    pass's readout does not depend on who reads it); the other ranks return None."""
    ranks = ranks or Ranks()
    names = list(models)
    first = ModelProbe(models[names[0]][0])
    depth = len(first.layers)
    sae_layer = sae["layer"] % depth
    result = Analysis()
    if not first.has_attention:
        result.notes.append(f"{first.kind} has no attention: the attention statistics are skipped")
    if probes.masks is None:
        result.notes.append("the probe images have no object masks: object_attention is skipped")
    for name in names[1:]:
        layers = len(ModelProbe(models[name][0]).layers)
        if layers != depth:
            raise ValueError(f"model {name!r} has {layers} layers, the base model {depth}")
    positions, tokens_per_image = _token_sample(
        models[names[0]][0], models[names[0]][1], probes.clean, device, sae_layer, sae["max_tokens"], seed
    )
    passes = [(name, kind) for name in names for kind in INPUTS][ranks.rank :: ranks.world]
    mine: dict[tuple[str, str], ModelReadout] = {}
    for name, kind in tqdm(passes, desc="analyze", unit="pass", disable=not ranks.main):
        model, normalize = models[name]
        images = probes.clean if kind == "clean" else probes.corrupted
        mine[name, kind] = read_model(
            model, normalize, images, probes.labels, probes.masks, batch_size, device, sae_layer, positions
        )
    gathered = ranks.gather(mine)
    if gathered is None:
        return None
    readouts: dict[tuple[str, str], ModelReadout] = {}
    for part in gathered:
        readouts.update(part)  # type: ignore[call-overload]
    base = names[0]
    # the SAE learns from the first half of the probe images and is tested on the other half, the
    # base model's included, so its error on the base model is out of sample like everyone else's
    held_out = positions // tokens_per_image >= len(probes.clean) // 2
    train_tokens = readouts[base, "clean"].sae_tokens[~held_out]
    features = sae["expansion"] * train_tokens.shape[1]
    dictionary = train_sae(
        train_tokens, TopKSAEConfig(features, sae["k"], sae["steps"], sae["batch_size"], sae["lr"], seed)
    )
    base_features = dictionary.active_features(readouts[base, "clean"].sae_tokens[held_out])
    for name in names:
        for kind in INPUTS:
            mine = readouts[name, kind]
            for layer, statistics in enumerate(mine.layers):
                row = {"model": name, "input": kind, "layer": layer, **statistics}
                row["cka_to_base"] = linear_cka(mine.pooled[layer], readouts[base, kind].pooled[layer])
                if kind == "corrupted":
                    row["cka_clean_corrupted"] = linear_cka(mine.pooled[layer], readouts[name, "clean"].pooled[layer])
                result.layers.append(row)
            result.heads += [{"model": name, "input": kind, **row} for row in mine.heads]
        clean, corrupted = readouts[name, "clean"], readouts[name, "corrupted"]
        result.models[name] = _summary(clean, corrupted, readouts[base, "clean"], readouts[base, "corrupted"])
        summary = result.models[name]
        summary["sae_fvu"] = dictionary.fraction_of_variance_unexplained(clean.sae_tokens[held_out])
        summary["sae_fvu_corrupted"] = dictionary.fraction_of_variance_unexplained(corrupted.sae_tokens[held_out])
        summary["sae_overlap"] = feature_overlap(base_features, dictionary.active_features(clean.sae_tokens[held_out]))
    result.notes.append(
        f"SAE: layer {sae_layer}, {features} features, k {sae['k']}, trained on {len(train_tokens)} base-model tokens "
        f"of the first half of the probe images, tested on {int(held_out.sum())} tokens of the other half"
    )
    return result


def _summary(
    clean: ModelReadout, corrupted: ModelReadout, base_clean: ModelReadout, base_corrupted: ModelReadout
) -> dict[str, float]:
    last = len(clean.layers) - 1
    summary = {
        "accuracy": clean.accuracy,
        "accuracy_corrupted": corrupted.accuracy,
        "cka_last": linear_cka(clean.pooled[last], base_clean.pooled[last]),
        "cka_last_corrupted": linear_cka(corrupted.pooled[last], base_corrupted.pooled[last]),
        "active_share": float(np.mean([layer["active_share"] for layer in clean.layers])),
    }
    distances = [layer["attention_distance"] for layer in clean.layers if "attention_distance" in layer]
    if distances:
        summary["attention_distance"] = float(np.mean(distances))
    return summary


def _token_sample(
    model: nn.Module,
    normalize: Callable[[Tensor], Tensor],
    images: np.ndarray,
    device: torch.device,
    layer: int,
    limit: int,
    seed: int,
) -> tuple[Tensor, int]:
    """Seeded positions among the probe images' (image, token) pairs at ``layer`` (at most ``limit``),
    and the tokens per image there."""
    probe = ModelProbe(model)
    with torch.no_grad(), probe.capture() as captured:
        model(normalize(torch.from_numpy(images[:1]).to(device)))
    per_image = int(captured.tokens[layer].shape[1])
    total = len(images) * per_image
    if total <= limit:
        return torch.arange(total), per_image
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(total, generator=generator)[:limit].sort().values, per_image
