"""The built-in spurious-correlation world: classes of parts, rendering, splits, the dataset artifact."""
