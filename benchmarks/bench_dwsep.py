"""dwsep on the real CIFAR ResNets: MACs, params, output error and measured ORT-CPU speedup at rank 1, 2, 3.

    python benchmarks/bench_dwsep.py [--models resnet20,resnet32] [--ranks 1,2,3] [--seconds 3]

Relative output error is ‖y_c − y_o‖ / ‖y_o‖ of the logits on 1,000 val5k images, before any fine-tuning.
Speedups (``convslim.runtime.measure_speed``) against the BN-folded original: both sessions alternate in blocks
of runs, a speedup is the median of the per-round ratios, with their interquartile range and the run count
(see ``convslim.runtime.timing``).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from common import cifar_arrays, cifar_model, markdown_table, top1

from convslim import compress
from convslim.runtime import TimingSettings, export_model, measure_speed
from convslim.verify.parity import compare_models


def run(model_name: str, rank: int, x_val, y_val, seconds: float) -> dict:
    model = cifar_model(model_name)
    start = time.perf_counter()
    result = compress(model, torch.randn(1, 3, 32, 32), to="dwsep", rank=rank, verify=False)
    rewrite_s = time.perf_counter() - start
    example = (torch.randn(1, 3, 32, 32),)
    with tempfile.TemporaryDirectory() as tmp:
        original_onnx, compressed_onnx = Path(tmp) / "o.onnx", Path(tmp) / "c.onnx"
        export_model(result.prepared.traced.module, example, original_onnx)
        export_model(result.model, example, compressed_onnx)
        speed = measure_speed(
            original_onnx, compressed_onnx, example, (1, 32), settings=TimingSettings(seconds=seconds)
        )
    error = compare_models(model, result.model, [(x_val[:1000],)])
    totals = result.report.totals
    return {
        "model": model_name,
        "rank": rank,
        "MACs": f"{totals['macs_after'] / totals['macs_before']:.1%}",
        "params": f"{totals['params_after'] / totals['params_before']:.1%}",
        "rel_out_err": error["rel_l2"],
        "top1_agree": error["top1_agreement"],
        "top1_val5k": top1(result.model, x_val, y_val),
        "speedup_b1": speed["1"]["speedup"],
        "speedup_b32": speed["32"]["speedup"],
        "rewrite_s": rewrite_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet20,resnet32")
    parser.add_argument("--ranks", default="1,2,3")
    parser.add_argument("--seconds", type=float, default=3.0, help="timing budget per batch size")
    args = parser.parse_args()
    torch.set_num_threads(2)
    x_val, y_val = cifar_arrays("val5k")
    rows = []
    for name in args.models.split(","):
        rows.append(
            {
                "model": name,
                "rank": "original",
                "MACs": "100%",
                "params": "100%",
                "rel_out_err": 0.0,
                "top1_agree": 1.0,
                "top1_val5k": top1(cifar_model(name), x_val, y_val),
                "speedup_b1": 1.0,
                "speedup_b32": 1.0,
                "rewrite_s": 0.0,
            }
        )
        for rank in (int(r) for r in args.ranks.split(",")):
            rows.append(run(name, rank, x_val, y_val, args.seconds))
            print(rows[-1], flush=True)
    print(markdown_table(rows))


if __name__ == "__main__":
    main()
