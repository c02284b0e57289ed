"""The command line: ``convslim compress | finetune | plan | inspect | sweep`` (``commands``), the argument groups
they share (``args``), and the per-conv table ``convslim inspect`` prints (``inspect``).

Example:
    >>> from convslim.cli import main
    >>> main(["compress", "model.pt", "--arch", "pkg.mod:Net", "--input-shape", "1,3,32,32", "--to", "dwsep"])
"""

from convslim.cli.commands import main

__all__ = ["main"]
