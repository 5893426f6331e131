"""Relevance maps (AttnLRP) that can be used inside a training loss."""
