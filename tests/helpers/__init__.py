"""Helpers shared by the tests (tests import these, never each other)."""
