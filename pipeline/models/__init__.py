"""Models: one builder for timm models (random, hub or local weights), the DINOv2 linear
classifiers, verified weight files, and model artifacts (safetensors + a JSON spec) that every
later stage loads."""
