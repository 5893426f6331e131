"""The kinds of evaluation set, in one list: ``split`` (a split of the prepared dataset), the
datasets on disk that :mod:`pipeline.benchmarks.catalog` reads in their own layouts, ``corrupted``
(another benchmark seen through ImageNet-C's corruptions) and the ImageNet-segmentation file
(relevance only)."""

DATASET_KINDS = ("imagefolder", "imagenet_v2", "imagenet_a", "imagenet_r", "objectnet", "si_score", "imagenet_c")
CORRUPTION_KINDS = ("corrupted", "imagenet_c")  # accuracy per corruption, severity and family
BENCHMARK_KINDS = ("split", *DATASET_KINDS, "corrupted", "imagenet_segmentation")
