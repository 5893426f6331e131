"""The kinds of evaluation set, in one list: ``split`` (a split of the prepared dataset), the
datasets on disk that :mod:`pipeline.benchmarks.catalog` reads in their own layouts, ``corrupted``
(another benchmark seen through ImageNet-C's corruptions) and the ImageNet-segmentation file
(relevance only)."""

DATASET_KINDS = (
    "imagefolder",
    "imagenet_v2",
    "imagenet_a",
    "imagenet_r",
    "objectnet",
    "si_score",
    "imagenet_c",
    "imagenet9",
)
CORRUPTION_KINDS = ("corrupted", "imagenet_c")  # accuracy per corruption, severity and family
# Reported apart from the OOD means by default: robustness to corruptions, and benchmarks whose
# variants remove the object (ImageNet-9's only_bg, no_fg), where accuracy is not robustness.
APART_KINDS = (*CORRUPTION_KINDS, "imagenet9")
# ImageNet-9's variant folders (MadryLab/backgrounds_challenge), in the paper's order.
IN9_VARIANTS = ("original", "only_fg", "no_fg", "only_bg_b", "only_bg_t", "mixed_same", "mixed_rand", "mixed_next")
# Image files that are already the crop the benchmark was made at: resized, never cropped again.
UNCROPPED_KINDS = ("imagenet_c", "imagenet9")
BENCHMARK_KINDS = ("split", *DATASET_KINDS, "corrupted", "imagenet_segmentation")
