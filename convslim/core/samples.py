"""How many samples each step takes, named once (each was a bare 64, 256 or 512 in several places).

Example:
    >>> calibration[:ACTIVATION_SAMPLES]   # what a form sees of the activations, and the parity check's real batch
"""

ACTIVATION_SAMPLES = (
    64  # real inputs recorded per conv (forms that choose from activations) and parity-checked
)
CALIBRATION_BATCH = (
    256  # real inputs --data gives compress as its calibration batch; the int8 planner's calibration
)
INT8_CALIBRATION = 512  # images int8 quantization calibrates on (--calib-data, else --data)
SESSION_BATCH = 64  # batch size for running a deployed model over held-out images
# below this many scored images a top-1 says little (one image is 1 pt at 100, 33 pt at 3): the terminal says so
# instead of printing the number (report.json keeps it, with its ``n``)
MEANINGFUL_SCORE = 100


def too_few(n: int, metric: str) -> str:
    """What the terminal says instead of a score on fewer than ``MEANINGFUL_SCORE`` images."""
    return (
        f"not shown: {n} image(s) are too few for a meaningful {metric} (need ≥ {MEANINGFUL_SCORE}); pass "
        "--val-data, or hold out more of --data with --val-split"
    )
