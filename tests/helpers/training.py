"""Counting (and interrupting) fine-tuning steps, as a kill would stop a run mid-epoch."""

from __future__ import annotations

import pytest

from pipeline.training import finetune as finetuning


class Interrupted(Exception):
    pass


def count_steps(monkeypatch: pytest.MonkeyPatch, stop_after: int | None = None) -> dict[str, int]:
    """Count fine-tuning steps (one ``joint_augment`` call each) in the returned ``{"n": ...}``;
    with ``stop_after``, raise inside the loop after that many, as a kill would stop it mid-epoch."""
    original = finetuning.joint_augment
    calls = {"n": 0}

    def counting(*args: object, **kwargs: object) -> object:
        calls["n"] += 1
        if stop_after is not None and calls["n"] > stop_after:
            raise Interrupted
        return original(*args, **kwargs)

    monkeypatch.setattr(finetuning, "joint_augment", counting)
    return calls
