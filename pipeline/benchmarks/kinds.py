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
    "waterbirds",
    "hard_imagenet",
)
CORRUPTION_KINDS = ("corrupted", "imagenet_c")  # accuracy per corruption, severity and family
# Reported apart from the OOD means by default: robustness to corruptions, benchmarks whose
# variants remove the object (ImageNet-9's only_bg, no_fg; Hard ImageNet's ablations), where
# accuracy is not robustness, and Waterbirds, whose plain mean is not its protocol's number.
APART_KINDS = (*CORRUPTION_KINDS, "imagenet9", "waterbirds", "hard_imagenet")
# Kinds with splits of their own (`split:` picks one)
SPLIT_KINDS = {"split": None, "waterbirds": ("train", "val", "test"), "hard_imagenet": ("train", "val")}
# ImageNet-9's variant folders (MadryLab/backgrounds_challenge), in the paper's order.
IN9_VARIANTS = ("original", "only_fg", "no_fg", "only_bg_b", "only_bg_t", "mixed_same", "mixed_rand", "mixed_next")
# Hard ImageNet: what takes the object away (each image is also scored as it is)
HARD_IMAGENET_ABLATIONS = ("gray", "gray_bbox", "blur")
# Image files that are already the crop the benchmark was made at: resized, never cropped again.
UNCROPPED_KINDS = ("imagenet_c", "imagenet9")
BENCHMARK_KINDS = ("split", *DATASET_KINDS, "corrupted", "imagenet_segmentation")
