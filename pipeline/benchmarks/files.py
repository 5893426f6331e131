"""The files `cft evaluate` leaves per model in ``results/evaluate/<benchmark>/<model>/``.

Named in a module of their own so that the writer (reports.py, run by every evaluate stage) and
the reader (summary.py, run by report) share them without importing each other: a change to how
the report draws never makes DVC re-run the evaluations.
"""

PREDICTIONS_NAME = "predictions.parquet"  # one row per image: file, targets, metadata, prediction per protocol
SCORES_NAME = "scores.json"  # every metric of the model on the benchmark, and how the benchmark was read
OVERLAY_NAME = "overlay.npz"  # the first images, their object masks and the model's relevance maps
FACTORS_NAME = "factors.csv"  # SI-Score: accuracy per factor value
CORRUPTIONS_NAME = "corruptions.csv"  # corruption benchmarks: accuracy per corruption and severity
