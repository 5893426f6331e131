"""What people read: metrics JSON, CSV files for ``dvc plots``, charts and relevance overlays, and
the summary of all evaluations (``dvc metrics show``)."""
