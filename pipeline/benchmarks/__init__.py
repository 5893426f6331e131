"""Evaluation: the benchmarks (splits of the prepared dataset and OOD datasets in their own
layouts, the spurious-reliance ones among them: ImageNet-9 Backgrounds, Waterbirds, Hard
ImageNet), their scoring protocols, relevance against object masks, and the resumable runner."""
