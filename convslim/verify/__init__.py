"""Export and verify: ONNX vs PyTorch parity and compressed vs original closeness (``parity``), the step of
``compress`` that exports, deploys, checks, times and writes the outputs (``pipeline``), and where a failed
parity first diverges (``diagnose``).

Example:
    >>> from convslim.verify import compare_models
    >>> compare_models(original, compressed, [(torch.randn(4, 3, 32, 32),)])["top1_agreement"]
"""

from convslim.verify.parity import DEFAULT_RTOL, compare_models, judge_with_floor, onnx_parity

__all__ = ["DEFAULT_RTOL", "compare_models", "judge_with_floor", "onnx_parity"]
