"""Training: the shared loop helpers, base training, fine-tuning with its resumable state, the
objectives (relevance alignment, RRR) and the ImageNet-C corruptions of the corruption baseline."""
