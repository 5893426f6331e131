"""Out-of-distribution ImageNet benchmarks: reading their folder layouts and scoring them by each protocol."""
