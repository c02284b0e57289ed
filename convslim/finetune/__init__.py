"""Brief fine-tuning that wins back accuracy after rewriting: stage 1 reconstruction, stage 2 distillation.

- ``recipe``: the recipe (``run``): score, refit each rewritten layer (``reconstruct``), then block-wise and
  end-to-end distillation (``distill``) with BatchNorms that fold back (``affine``), keeping the best weights.
- ``hook``: ``finetune(data, val)`` (the ``compress(finetune=)`` hook), ``from_files`` (data from disk) and
  ``from_data`` (data loaded already: the CLI).
- ``datafree``: ``from_synthetic`` (no data: images made from the model's BatchNorm statistics).
- ``settings``: ``FinetuneSettings``; ``feed``: batches, augmentation, scoring; ``stopping``: the step/time
  budget and Ctrl-C.

Example:
    >>> from convslim.finetune import finetune
    >>> hook = finetune(train_data, val_data, minutes=8, batch_size=128)
    >>> result = compress(model, example, to="dwsep", rank=1, finetune=hook, calibration=calib)
    >>> result.report.finetune["accuracy"]
"""

from convslim.finetune.datafree import DataFreeHook, from_synthetic, generation_settings
from convslim.finetune.hook import (
    FinetuneData,
    FinetuneHook,
    check_finetunable,
    finetune,
    from_data,
    from_files,
)
from convslim.finetune.recipe import run
from convslim.finetune.settings import DEFAULT_STEPS, FinetuneSettings

__all__ = [
    "DEFAULT_STEPS",
    "DataFreeHook",
    "FinetuneData",
    "FinetuneHook",
    "FinetuneSettings",
    "check_finetunable",
    "finetune",
    "from_data",
    "from_files",
    "from_synthetic",
    "generation_settings",
    "run",
]
