"""Typed errors. ``UsageError`` and its subclasses are the user's to fix: the CLI prints them as one
line and exits 2. ``VerificationError`` means the output was written but failed a check (exit 1)."""


class ConvslimError(Exception):
    """Base class for every error convslim raises on purpose."""


class UsageError(ConvslimError):
    """Bad input from the user: a file, a flag, a shape. The message says what to do."""


class ModelLoadError(UsageError):
    """The model file cannot be loaded the way it was asked for."""


class TraceError(ConvslimError):
    """A graph pass could not handle a node; the message names the node and the pass."""


class PlanError(UsageError):
    """A plan does not fit the model it is applied to."""


class VerificationError(ConvslimError):
    """The compressed model was written but failed verification (parity above tolerance)."""
