"""The world's splits, in a fixed order: a split's position seeds its images, so new splits are
appended and older ones keep their images."""

WORLD_SPLITS = (
    "pretrain",
    "train",
    "val",
    "test",
    "random_bg",
    "swapped_bg",
    "rendition",
    "sketch",
    "pose_sweep",
    "scene",
    "cue_removed",
    "cue_swapped",
    "backgrounds",
)
# The splits that are evaluation sets (pretrain, train and val are not).
WORLD_BENCHMARKS = tuple(split for split in WORLD_SPLITS if split not in ("pretrain", "train", "val"))
# Drawn and evaluated only on request: every model is at chance on them (docs/world.md).
OFF_BY_DEFAULT = ("rendition", "sketch")

# The backgrounds split draws each scene (object, pose, colours, cue) in these variants, one image
# each and in this order, after Xiao et al.'s ImageNet-9 (docs/world.md: The backgrounds split).
BACKGROUND_VARIANTS = ("original", "only_fg", "no_fg", "only_bg", "mixed_same", "mixed_rand", "mixed_next")
