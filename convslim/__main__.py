"""``python -m convslim ...``: the CLI, also what ``torchrun -m convslim ...`` launches on every rank."""

import sys

from convslim.cli import main

if __name__ == "__main__":
    sys.exit(main())
