"""The prepared dataset: its manifest (one row per image), image arrays in a sharded zarr store,
image folders and Waterbirds read in place (one shared, decode-checked file selection), the
seeded fine-tuning subset, a model's input transform, class names, and the built-in synthetic
world with ground-truth part masks (``pipeline.data.world``)."""
