"""ImageNet-C's corruptions in torch (ops.py) and their families (families.py, importable without
torch): what the corruption fine-tuning methods train on and what the corruption benchmarks
(kinds ``corrupted`` and ``imagenet_c``) measure."""
