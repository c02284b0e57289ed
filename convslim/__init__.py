"""convslim: make trained CNNs cheaper to run.

>>> import convslim
>>> result = convslim.compress(model, (torch.randn(1, 3, 32, 32),), to="dwsep", rank=1)
>>> result.model, result.report
"""

from convslim.api import (
    CompressionResult,
    Prepared,
    apply,
    compress,
    finetune_output,
    load_compressed,
    plan,
    prepare,
    rewrite,
)
from convslim.convert import FORMS, get_form, register_form
from convslim.core import Plan
from convslim.errors import ConvslimError, ModelLoadError, PlanError, UsageError
from convslim.tradeoff import SweepResult, SweepSettings, sweep
from convslim.version import __version__ as __version__

__all__ = [
    "FORMS",
    "CompressionResult",
    "ConvslimError",
    "ModelLoadError",
    "Plan",
    "PlanError",
    "Prepared",
    "SweepResult",
    "SweepSettings",
    "UsageError",
    "apply",
    "compress",
    "finetune_output",
    "get_form",
    "load_compressed",
    "plan",
    "prepare",
    "register_form",
    "rewrite",
    "sweep",
]
