"""Small random-weight GroundingDINO and SAM with their real architectures, for tests and benchmarks.

GroundingDINO keeps its Swin-T backbone and fusion design, with one encoder and decoder layer,
few queries and a tiny local BERT (random weights, a small vocabulary); SAM keeps its encoder,
prompt encoder and decoder, with a narrow two-block image encoder on 256-pixel inputs.
"""

from __future__ import annotations

from pathlib import Path

import torch

from pipeline.config.masks import GroundingDinoConfig
from pipeline.masks.segmenting import SamArchitecture

WORDS = [
    "wing",
    "wings",
    "beak",
    "long",
    "red",
    "tail",
    "wheel",
    "wheels",
    "bird",
    "car",
    "fin",
    "door",
    "window",
    "head",
    "leg",
    "legs",
    "roof",
    "body",
    "stripe",
    "stripes",
]
GROUNDING_OVERRIDES = {"enc_layers": 1, "dec_layers": 1, "num_queries": 30, "dim_feedforward": 64}
TINY_SAM = SamArchitecture(
    embed_dim=32, depth=2, num_heads=2, global_attn_indexes=(1,), image_size=256, window_size=4, decoder_mlp_dim=64
)


def tiny_text_encoder(directory: Path, seed: int = 0) -> Path:
    """A random 1-layer BERT with a vocabulary of WORDS, saved like a Hugging Face model directory."""
    from transformers import BertConfig, BertModel, BertTokenizer

    directory.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", "?", *WORDS]
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizer(str(directory / "vocab.txt")).save_pretrained(directory)
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(directory)
    return directory


def tiny_grounding_config(text_encoder: Path, **changes: object) -> GroundingDinoConfig:
    settings = {
        "text_encoder": str(text_encoder),
        "image_size": 96,
        "max_size": 160,
        "box_threshold": 0.3,
        "text_threshold": 0.2,
        **changes,
    }
    return GroundingDinoConfig(**settings)


def tiny_grounding_config_file(path: Path) -> Path:
    """A GroundingDINO config file (the shipped Swin-T one with small heads), for params-driven tests."""
    import groundingdino.config

    shipped = (Path(groundingdino.config.__file__).parent / "GroundingDINO_SwinT_OGC.py").read_text()
    overrides = "\n".join(f"{key} = {value!r}" for key, value in GROUNDING_OVERRIDES.items())
    path.write_text(shipped + "\n" + overrides + "\n")
    return path


def spread_scores(model: torch.nn.Module, scale: float = 0.02) -> None:
    """Random weights saturate the query-text similarity (every score 1.0); shrink the decoder's
    output, which the similarity is linear in, so scores differ."""
    with torch.no_grad():
        model.transformer.decoder.norm.weight.mul_(scale)
        model.transformer.decoder.norm.bias.mul_(scale)


def save_tiny_grounded_sam(directory: Path) -> dict[str, Path]:
    """Weights files of the tiny models as a user keeps them: a GroundingDINO config, its checkpoint
    and text encoder, and a SAM checkpoint of the TINY_SAM architecture (to stand in for vit_b)."""
    from pipeline.masks.grounding import build_grounding_dino
    from pipeline.masks.segmenting import build_sam

    directory.mkdir(parents=True, exist_ok=True)
    text_encoder = tiny_text_encoder(directory / "bert")
    config_file = tiny_grounding_config_file(directory / "tiny_dino.py")
    torch.manual_seed(0)
    dino = build_grounding_dino(tiny_grounding_config(text_encoder, config=str(config_file)))
    spread_scores(dino)
    torch.save({"model": dino.state_dict()}, directory / "dino.pth")
    torch.save(build_sam(TINY_SAM).state_dict(), directory / "sam_vit_b.pth")
    return {
        "text_encoder": text_encoder,
        "config": config_file,
        "grounding": directory / "dino.pth",
        "sam": directory / "sam_vit_b.pth",
    }


def tiny_grounded_sam_params(directory: Path, images_per_part: int) -> dict:
    """params.yaml's ``masks`` section for the tiny models saved in ``directory`` by
    :func:`save_tiny_grounded_sam` (SAM's file under the vit_b preset: swap in TINY_SAM to run it)."""
    from pipeline.models.weights import file_sha256

    return {
        "masks": {
            "backend": "grounded_sam",
            "resolution": 16,
            "grounded_sam": {
                "grounding": {
                    "config": str(directory / "tiny_dino.py"),
                    "checkpoint": str(directory / "dino.pth"),
                    "text_encoder": str(directory / "bert"),
                    "image_size": 64,
                    "max_size": 96,
                    "box_threshold": 0.6,
                    "text_threshold": 0.5,
                },
                "sam": {
                    "model_type": "vit_b",
                    "checkpoint": str(directory / "sam_vit_b.pth"),
                    "sha256": file_sha256(directory / "sam_vit_b.pth"),
                },
                "device": "cpu",
                "images_per_part": images_per_part,
            },
        }
    }
