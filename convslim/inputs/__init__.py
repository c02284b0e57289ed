"""What goes in: the model (``loading``: state_dict + class, torch.export .pt2, trusted pickle), the user's data
(``data``: image folders, .npz, .pt, checked against the model; ``sets``: the files of one run and the share
of --data held out to score on), or images made from the model's own BatchNorm
statistics when there is no data (``synthetic``), and a guess at the input size (``hint``).

Example:
    >>> from convslim.inputs import load_model, parse_input_shapes
    >>> model = load_model("model.pt", arch="pkg.mod:Net")
    >>> example = tuple(torch.randn(s) for s in parse_input_shapes("1,3,32,32"))
"""

from convslim.inputs.data import ArrayData, load_data, load_for_model
from convslim.inputs.hint import input_size_hint
from convslim.inputs.loading import check_finite, load_model, parse_input_shapes
from convslim.inputs.synthetic import SynthesisSettings, SyntheticData, parse_synthetic, synthesize

__all__ = [
    "ArrayData",
    "SynthesisSettings",
    "SyntheticData",
    "check_finite",
    "input_size_hint",
    "load_data",
    "load_for_model",
    "load_model",
    "parse_input_shapes",
    "parse_synthetic",
    "synthesize",
]
