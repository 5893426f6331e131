"""The two streams of an AttnLRP pass, carried through unmodified model code as one object.

:mod:`pipeline.relevance.attnlrp` runs every model on two streams at once: the ordinary forward
pass ``h`` and the linearised stream ``x̃``, whose coefficients are taken from ``h``. The rules
(:mod:`pipeline.relevance.rules`, :mod:`pipeline.relevance.families`) take and return a
:class:`TwoStreams`; all other code (timm's model, block, patch-embedding and head forwards, the
Linear and convolution layers) receives it where it expects a tensor, and every torch function,
tensor method and operator it calls runs on each stream on its own, tensors among the arguments
shared by both (``x + pos_embed``, ``torch.cat([cls_token, x])``, ``F.linear(x, weight, bias)``).

Keeping the streams apart, rather than as the two halves of one doubled batch, is what makes the
exact relevance gradient affordable: autograd then differentiates each layer only for the stream a
gradient reaches (the relevance gradient flows through the linearised stream, the training loss
into the ordinary one), where over a doubled batch every backward product ran over both halves and
every split filled the other half's gradient with zeros. Measured in ``benchmarks/relevance_step.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


class TwoStreams:
    """The ordinary stream (``normal``) and the linearised stream (``linear``) of one batch."""

    __slots__ = ("normal", "linear")

    def __init__(self, normal: torch.Tensor, linear: torch.Tensor) -> None:
        self.normal = normal
        self.linear = linear

    @classmethod
    def __torch_function__(
        cls, func: Callable[..., Any], types: Any, args: tuple = (), kwargs: dict | None = None
    ) -> Any:
        kwargs = kwargs or {}
        return _join(func(*_pick(args, 0), **_pick(kwargs, 0)), func(*_pick(args, 1), **_pick(kwargs, 1)))

    def __getattr__(self, name: str) -> Any:
        """Tensor attributes and methods: ``x.shape`` (the same for both), ``x.flatten(2)``, ``x.mul_(g)``."""
        normal = getattr(self.normal, name)
        if not callable(normal):
            return _join(normal, getattr(self.linear, name))

        def method(*args: Any, **kwargs: Any) -> Any:
            return _join(
                normal(*_pick(args, 0), **_pick(kwargs, 0)),
                getattr(self.linear, name)(*_pick(args, 1), **_pick(kwargs, 1)),
            )

        return method

    def __len__(self) -> int:
        return len(self.normal)

    def __repr__(self) -> str:
        return f"TwoStreams(shape={tuple(self.normal.shape)}, dtype={self.normal.dtype})"


def _operator(name: str) -> Callable[..., Any]:
    def apply(self: TwoStreams, *args: Any) -> Any:
        return _join(getattr(self.normal, name)(*_pick(args, 0)), getattr(self.linear, name)(*_pick(args, 1)))

    apply.__name__ = name
    return apply


# Operators timm's forwards use on activations (residual adds, layer scale, token slicing), with
# their reflected and in-place forms; special methods are looked up on the class, not __getattr__.
for _name in (
    "__add__ __radd__ __iadd__ __sub__ __rsub__ __mul__ __rmul__ __imul__ __truediv__ __matmul__ "
    "__rmatmul__ __neg__ __getitem__"
).split():
    setattr(TwoStreams, _name, _operator(_name))


def _pick(value: Any, stream: int) -> Any:
    """``value`` with every TwoStreams inside (also in lists, tuples and dicts) replaced by one stream."""
    if isinstance(value, TwoStreams):
        return value.linear if stream else value.normal
    if isinstance(value, (list, tuple)):
        return type(value)(_pick(item, stream) for item in value)
    if isinstance(value, dict):
        return {key: _pick(item, stream) for key, item in value.items()}
    return value


def _join(normal: Any, linear: Any) -> Any:
    """The two streams' results of one operation as one: tensors pair up (also inside tuples and
    lists, as from ``unbind``); anything else (shapes, sizes, dtypes) is the same for both."""
    if isinstance(normal, torch.Tensor):
        return TwoStreams(normal, linear)
    if isinstance(normal, (list, tuple)) and not isinstance(normal, torch.Size):
        return type(normal)(_join(a, b) for a, b in zip(normal, linear, strict=True))
    return normal
