"""Training: the shared loop helpers, base training, fine-tuning with its resumable state, the
objectives (relevance alignment, RRR); the corruption baseline draws its corruptions from
``pipeline.corruptions``."""
