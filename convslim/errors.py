"""Typed errors. ``UsageError`` and its subclasses are the user's to fix: the CLI prints them as one
line and exits 2. A failed verification is not an error: the report says ``passed: false`` and the CLI exits 1."""


class ConvslimError(Exception):
    """Base class for every error convslim raises on purpose."""


class UsageError(ConvslimError):
    """Bad input from the user: a file, a flag, a shape. The message says what to do."""


class ModelLoadError(UsageError):
    """The model file cannot be loaded the way it was asked for."""


class PlanError(UsageError):
    """A plan does not fit the model it is applied to."""
