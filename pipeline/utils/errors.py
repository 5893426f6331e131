"""The one base class of user-facing errors.

A :class:`CftError` means the input is at fault (params, files, a model the method cannot handle),
and its message names the file or key and the problem. Stage commands print it as one line and
exit 2; any other exception is a bug and keeps its traceback. It is a ``ValueError``, so callers
that catch ``ValueError`` keep working.
"""


class CftError(ValueError):
    """Bad input: the message names the file (or params key) and the problem."""
