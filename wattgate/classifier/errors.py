"""The classifier package's one base exception."""

from __future__ import annotations


class ClassifierError(Exception):
    """Base of every classifier error: a bad model file, bad training data, an unreachable store."""


class ModelFormatError(ClassifierError):
    """A model document that is not ours, of another format version, or altered since it was written."""
