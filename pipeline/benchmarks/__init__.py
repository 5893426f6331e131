"""Evaluation: the benchmarks (splits of the prepared dataset and OOD datasets in their own
layouts), their scoring protocols, relevance against object masks, and the resumable runner."""
