"""Draw issue 25's budget slope: val5k top-1 against fine-tune minutes, one line per fixed plan.

The points are the measured rows of ``benchmarks/slope.json`` (each with the command that made it, see
``benchmarks/RESULTS.md``); the original's top-1 is drawn dashed. Needs matplotlib (``pip install convslim[plot]``).

    python benchmarks/plot_slope.py                      # writes benchmarks/slope.png
"""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

from convslim.core.outputs import atomic_write_bytes

HERE = Path(__file__).resolve().parent


def draw(table: dict, out: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 4), layout="tight")
    FigureCanvasAgg(figure)  # the Agg backend, without touching pyplot's global state (as convslim.tradeoff)
    ax = figure.add_subplot()
    for name, line in table["plans"].items():
        minutes = sorted(line["top1"], key=float)
        (drawn,) = ax.plot([float(m) for m in minutes], [line["top1"][m] for m in minutes], "o-", label=name)
        if "original" in line:
            ax.axhline(line["original"], color=drawn.get_color(), linestyle="--", linewidth=0.8)
    ax.set_xscale("log", base=2)
    ticks = sorted({float(m) for line in table["plans"].values() for m in line["top1"]})
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.set_xlabel("fine-tune minutes (2 cores; step budgets)")
    ax.set_ylabel("top-1 on val5k (5,000 images), %")
    ax.set_title(table["title"], fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    atomic_write_bytes(out, buffer.getvalue())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", type=Path, default=HERE / "slope.json")
    parser.add_argument("--out", type=Path, default=HERE / "slope.png")
    args = parser.parse_args()
    draw(json.loads(args.table.read_text()), args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
