"""Helpers with no knowledge of datasets or models: atomic writes, resumable state and code
digests, devices and autocast, and the check that files named in params are DVC dependencies."""
