"""A top-k sparse autoencoder (Gao et al. 2024, "Scaling and evaluating sparse autoencoders") for one layer.

Trained on a layer's activations from one model, it gives a dictionary of features; its reconstruction error on
another model's activations (`fraction_of_variance_unexplained`) and the overlap of the features that fire
(`feature_overlap`) then say whether fine-tuning kept that layer's vocabulary or moved away from it.

Hand-written rather than taken from the registry: the SAE packages there (sae-lens, sparsify, ...) pull in
transformer_lens or transformers and are built around language-model hooks and token streams, while a top-k SAE is
a few lines of torch that the tests here check against a planted dictionary.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

_CHUNK = 4096  # rows per forward pass when evaluating, so that (n, features) codes never sit in memory at once


@dataclass
class TopKSAEConfig:
    """Size and training schedule; ``features`` is usually a small multiple (e.g. 4x) of the activation width."""

    features: int
    k: int = 8
    steps: int = 2000
    batch_size: int = 256
    lr: float = 1e-3
    seed: int = 0


class TopKSAE(nn.Module):
    """Encoder + ReLU keeping the k largest codes per input, and a decoder with unit-norm columns.

    Inputs are standardised by a stored per-dimension mean and one scalar scale, so the same learning rate fits
    activations of any magnitude; codes live on that standardised scale, reconstructions on the original one.
    """

    def __init__(self, width: int, features: int, k: int) -> None:
        super().__init__()
        if not 1 <= k <= features:
            raise ValueError(f"k must be between 1 and features={features}, got {k}")
        self.encoder = nn.Linear(width, features)
        self.decoder = nn.Parameter(torch.zeros(width, features))  # column j is feature j's direction
        self.b_dec = nn.Parameter(torch.zeros(width))
        self.register_buffer("mean", torch.zeros(width))
        self.register_buffer("scale", torch.ones(()))
        self.register_buffer("k", torch.tensor(k))

    @classmethod
    def from_state_dict(cls, state: dict[str, Tensor]) -> TopKSAE:
        """Rebuild a saved SAE; its sizes are read from the state itself."""
        features, width = state["encoder.weight"].shape
        sae = cls(width, features, int(state["k"]))
        sae.load_state_dict(state)
        return sae

    def encode(self, x: Tensor) -> Tensor:
        """Sparse codes (n, features): at most k non-negative entries per row."""
        z = (x - self.mean) / self.scale
        pre = self.encoder(z - self.b_dec)
        values, indices = pre.topk(int(self.k), dim=-1)
        return torch.zeros_like(pre).scatter(-1, indices, values.relu())

    def decode(self, codes: Tensor) -> Tensor:
        """Reconstruction on the original scale of the activations."""
        return (codes @ self.decoder.T + self.b_dec) * self.scale + self.mean

    def forward(self, x: Tensor) -> Tensor:
        return self.decode(self.encode(x))

    @torch.no_grad()
    def fraction_of_variance_unexplained(self, x: Tensor) -> float:
        """||x − x̂||² / ||x − mean(x)||² over all of ``x`` (n, width); 0 is perfect, about 1 is no better than the mean."""
        x = x.detach().to(self.mean.device, torch.float32)
        error = sum(float((part - self(part)).double().pow(2).sum()) for part in x.split(_CHUNK))
        total = float((x.double() - x.double().mean(dim=0)).pow(2).sum())
        if total == 0:  # constant inputs: nothing to explain, so only a perfect reconstruction counts as explained
            return 0.0 if error == 0 else float("inf")
        return error / total

    @torch.no_grad()
    def active_features(self, x: Tensor, min_share: float = 1e-3) -> Tensor:
        """Which features (bool, (features,)) fire on at least ``min_share`` of the rows of ``x``."""
        x = x.detach().to(self.mean.device, torch.float32)
        fired = sum((self.encode(part) > 0).sum(dim=0) for part in x.split(_CHUNK))
        return fired >= min_share * x.shape[0]

    @torch.no_grad()
    def _normalise_decoder(self) -> None:
        self.decoder.div_(torch.linalg.vector_norm(self.decoder, dim=0, keepdim=True).clamp_min(1e-12))


def train_sae(activations: Tensor, config: TopKSAEConfig) -> TopKSAE:
    """Fit a top-k SAE to ``activations`` (n, width); the same seed gives the same SAE on CPU.

    Adam on the squared reconstruction error of standardised inputs, with the decoder columns put back to unit
    norm after every step so that code magnitudes carry the scale. Features that never fire (dead latents) are
    left as they are: Gao et al.'s auxiliary loss that revives them matters at scale, not for comparing layers.
    """
    if activations.ndim != 2 or activations.shape[0] < 2:
        raise ValueError(f"train_sae expects (n >= 2, width) activations, got shape {tuple(activations.shape)}")
    x = activations.detach().to(torch.float32).clone()  # clone: a normal tensor even if captured in inference mode
    n, width = x.shape
    generator = torch.Generator().manual_seed(config.seed)
    sae = TopKSAE(width, config.features, config.k)
    with torch.no_grad():
        directions = torch.randn(config.features, width, generator=generator)
        directions /= torch.linalg.vector_norm(directions, dim=1, keepdim=True)
        sae.encoder.weight.copy_(directions)
        sae.encoder.bias.zero_()
        sae.decoder.copy_(directions.T)
        mean = x.mean(dim=0)
        spread = (x - mean).pow(2).mean().sqrt()
        sae.mean.copy_(mean)
        sae.scale.copy_(spread if spread > 0 else torch.ones(()))
    sae.to(x.device)
    optimiser = torch.optim.Adam(sae.parameters(), lr=config.lr)
    with torch.enable_grad():
        for _ in range(config.steps):
            batch = x[torch.randint(n, (config.batch_size,), generator=generator).to(x.device)]
            target = (batch - sae.mean) / sae.scale
            reconstruction = sae.encode(batch) @ sae.decoder.T + sae.b_dec
            loss = (reconstruction - target).pow(2).sum(dim=-1).mean()
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            sae._normalise_decoder()
    return sae.eval()


def feature_overlap(a: Tensor, b: Tensor) -> float:
    """Jaccard index of two active-feature sets (bool masks over the same features); 1.0 when both are empty."""
    if a.shape != b.shape:
        raise ValueError(f"feature sets must cover the same features, got shapes {tuple(a.shape)} and {tuple(b.shape)}")
    a, b = a.bool(), b.bool()
    union = int((a | b).sum())
    return int((a & b).sum()) / union if union else 1.0
