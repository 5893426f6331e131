"""Thin typer commands, one per pipeline stage: parse, call ``pipeline``, write artifacts."""
