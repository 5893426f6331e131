"""Relevance maps: AttnLRP with one rule map per model family (``vit``, ``convnext``, shared pieces
in ``rules``), Chefer et al.'s gradient-weighted attention rollout, and batched maps at image
resolution for losses and evaluation."""
