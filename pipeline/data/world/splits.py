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
)
# The splits that are evaluation sets (pretrain, train and val are not).
WORLD_BENCHMARKS = tuple(split for split in WORLD_SPLITS if split not in ("pretrain", "train", "val"))
# Drawn and evaluated only on request: every model is at chance on them (docs/world.md).
OFF_BY_DEFAULT = ("rendition", "sketch")
