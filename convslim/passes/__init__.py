"""torch.fx graph passes. Each pass maps a GraphModule to a GraphModule and leaves its input alone
unless its name ends in ``_`` (in-place)."""

from convslim.passes.apply_plan import apply_plan
from convslim.passes.fold_bn import fold_batchnorm
from convslim.passes.form_passes import GRAPH_PASSES, register_graph_pass
from convslim.passes.trace import TracedModel, collect_conv_sites, trace_model

__all__ = [
    "GRAPH_PASSES",
    "TracedModel",
    "apply_plan",
    "collect_conv_sites",
    "fold_batchnorm",
    "register_graph_pass",
    "trace_model",
]
