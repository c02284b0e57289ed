"""Careless and hostile input, round 2 (issue 27): no NaN model passes, a plan file is checked against the model,
values are checked before any work, SIGTERM cleans up like Ctrl-C, the accuracy printed is held out.

``CASES`` is the matrix, one refused input per line (the next round only adds lines): the command line (``SMALL``,
``THREE`` and ``OUT`` are expanded, ``{name}`` are the files ``world`` makes), the exit code and a fragment of
the one line the user reads. Every case runs in a private working folder and a private ``$TMPDIR`` and must
leave nothing there, nor in ``--out``.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import tempfile
from pathlib import Path
from types import MappingProxyType

import numpy as np
import pytest
import torch

import convslim
from convslim.cli import main
from tests.cli_models import MODELS, InSize, Small, Three

MACROS = {
    "SMALL": "{small} --arch {models}:small --input-shape 1,3,16,16",
    "THREE": "{three} --arch {models}:three --input-shape 1,3,16,16",
    "OUT": "--out {out} --no-speed --quiet",
}
# fmt: off
CASES = [
    # 1. non-finite data, named by its flag and file
    ("nan in --data", "compress SMALL --data {nan} OUT", 2, "--data {nan}: 1 of 12 samples hold NaN"),
    ("inf in --val-data", "compress SMALL --data {train} --val-data {inf} OUT", 2, "--val-data {inf}: 1 of 12"),
    ("nan in --calib-data", "compress SMALL --int8 --calib-data {nan} OUT", 2, "--calib-data {nan}: 1 of 12"),
    ("nan --mean", "compress SMALL --data {train} --mean nan OUT", 2, "--mean 'nan': expected finite numbers"),
    # 2. a plan made for another model, both ways, naming the layers that differ
    ("plan of a smaller model", "compress THREE --plan {plan} OUT", 2, "convs 'conv3' (1) are not in the plan"),
    ("plan of a bigger model", "compress SMALL --plan {plan3} OUT", 2, "layers 'conv3' (1) are not convs of this"),
    ("finetune: another model", "finetune {src} THREE --data {train} OUT", 2, "was made for another model"),
    # 3. a plan is untrusted: each setting checked with its form's own option checks
    ("plan groups not dividing", "compress SMALL --plan {groups3} OUT", 2, "not divisible by groups=3"),
    ("plan rank 1.5", "compress SMALL --plan {rank_half} OUT", 2, "setting rank must be a whole number ≥ 1"),
    ("plan unknown key", "compress SMALL --plan {unknown_key} OUT", 2, "dwsep settings have no 'ranks'"),
    ("plan unknown form", "compress SMALL --plan {unknown_form} OUT", 2, "layer conv2: unknown form 'dwsap'"),
    ("plan octave channels", "compress SMALL --plan {octave_bad} OUT", 2, "low_in must list distinct channels"),
    # 4. one line, no traceback
    ("plan not UTF-8", "compress SMALL --plan {latin1} OUT", 2, "not UTF-8 text"),
    ("plan setting text", "compress SMALL --plan {rank_text} OUT", 2, "dwsep setting rank must be a number"),
    ("plan setting a list", "compress SMALL --plan {setting_list} OUT", 2, "layers[1]: setting must be dict"),
    ("plan layers not list", "compress SMALL --plan {layers_obj} OUT", 2, "layers must be list"),
    ("finetune corrupt weights", "finetune {corrupt} SMALL --data {train} OUT", 2, "truncated or corrupt"),
    ("finetune plan not UTF-8", "finetune {latin_src} SMALL --data {train} OUT", 2, "not UTF-8 text"),
    # 5. names must exist, numbers lie in their domain, messages name the right flag
    ("--device cuda", "compress SMALL --device cuda OUT", 2, "--device cuda: cuda is not available here"),
    ("--device bogus", "compress SMALL --device gpu0 OUT", 2, "--device 'gpu0': not a torch device"),
    ("--exclude typo", "compress SMALL --exclude conv9 OUT", 2, "--exclude conv9: no conv of this model"),
    ("plan --exclude typo", "plan SMALL --exclude conv9 --out {plan_out}", 2, "--exclude conv9: no conv"),
    ("sweep --exclude typo", "sweep SMALL --targets 2 --exclude conv9 --data {train} OUT", 2, "--exclude conv9"),
    ("--to list typo", "compress SMALL --to dwsep,dwsap --target-speedup 2 OUT", 2, "unknown form 'dwsap'"),
    ("inspect --to typo", "inspect SMALL --to dwsep,dwsap", 2, "unknown form 'dwsap'"),
    ("--int8-exclude typo", "compress SMALL --int8 --calib-data {train} --int8-exclude Cnv OUT", 2, "Cnv: no node"),
    ("--int8-exclude on fp32", "compress SMALL --int8-exclude Conv OUT", 2, "under --runtime cpu-int8 only"),
    ("--tolerance nan", "compress SMALL --tolerance nan OUT", 2, "--tolerance nan: must be a finite number"),
    ("--target-speedup inf", "compress SMALL --to auto --target-speedup inf OUT", 2, "must be a finite number"),
    ("--lr nan", "compress SMALL --data {train} --lr nan OUT", 2, "--lr must be a finite number"),
    ("--weight-decay -1", "compress SMALL --data {train} --weight-decay -1 OUT", 2, "--weight-decay must be ≥ 0"),
    ("--finetune-minutes inf", "compress SMALL --data {train} --finetune-minutes inf OUT", 2, "finite number"),
    ("--val-split 1", "compress SMALL --data {train} --val-split 1 OUT", 2, "--val-split 1.0: must be a fraction"),
    ("--val-split and --val-data", "compress SMALL --data {train} --val-data {train} --val-split 0.2 OUT", 2, "drop one"),
    ("--plan-batch 0", "plan SMALL --to auto --target-speedup 2 --plan-batch 0 --out {plan_out}", 2, "positive"),
    ("--plan-threads 0", "plan SMALL --to auto --target-speedup 2 --plan-threads 0 --out {plan_out}", 2, "positive thread count or 'default'"),
    ("--plan-threads two", "compress SMALL --to auto --target-speedup 2 --plan-threads two OUT", 2, "--plan-threads two: give a positive"),
    ("sweep target 0.5", "sweep SMALL --targets 2,0.5 --data {train} OUT", 2, "0.5 is not a speedup above 1"),
    ("sweep target nan", "sweep SMALL --targets 2,nan --data {train} OUT", 2, "nan is not a speedup above 1"),
    ("missing --val-data", "compress SMALL --data {train} --val-data {missing} OUT", 2, "--val-data {missing}: no"),
    ("missing --calib-data", "compress SMALL --int8 --calib-data {missing} OUT", 2, "--calib-data {missing}: no"),
    # 8. a static-shape model runs at one batch: it is planned there
    ("--static-shape elsewhere", "compress SMALL --static-shape --to auto --target-speedup 2 --plan-batch 8 OUT", 2, "runs only at batch 1"),
    # 9. a fixed-size model's pytorchcv in_size is named
    ("in_size hint", "inspect {in_size} --arch {models}:in_size --input-shape 1,3,16,16", 2, "declares in_size (40, 40): try --input-shape 1,3,40,40"),
]
# fmt: on


def _plan_json(model, **edits) -> dict:
    plan = json.loads(convslim.plan(model, torch.randn(1, 3, 16, 16), to="dwsep", rank=1).to_json())
    for key, value in edits.items():
        plan["layers"][1][key] = value
    return plan


def _output_folder(folder: Path, plan: dict, weights: bytes | None = None) -> Path:
    """What ``convslim compress`` leaves for ``finetune``: plan.json and compressed_state_dict.pt."""
    folder.mkdir()
    (folder / "plan.json").write_text(json.dumps(plan))
    if weights is None:
        compressed = convslim.apply(
            Small(), convslim.core.Plan.from_json(json.dumps(plan)), torch.randn(1, 3, 16, 16)
        )
        torch.save(compressed.state_dict(), folder / "compressed_state_dict.pt")
    else:
        (folder / "compressed_state_dict.pt").write_bytes(weights)
    return folder


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, str]:
    """The files the cases name (made once; nothing writes to them)."""
    torch.manual_seed(0)
    w = tmp_path_factory.mktemp("world")
    files = {"models": str(MODELS), "missing": str(w / "missing.npz")}
    for name, model in (("small", Small()), ("three", Three()), ("in_size", InSize())):
        torch.save(model.state_dict(), w / f"{name}.pt")
        files[name] = str(w / f"{name}.pt")
    x, y = np.random.default_rng(0).random((12, 3, 16, 16), dtype=np.float32), np.arange(12) % 10
    for name, bad in (("train", None), ("nan", np.nan), ("inf", np.inf)):
        damaged = x.copy()
        damaged[3 if bad is np.nan else 5, 0, 0, 0] = bad if bad is not None else damaged[0, 0, 0, 0]
        np.savez(w / f"{name}.npz", x=damaged, y=y)
        files[name] = str(w / f"{name}.npz")
    octave = _plan_json(Small(), form="octave", setting={"alpha": 0.5, "low_in": [0, 99], "low_out": [0]})
    plans = {
        "plan": _plan_json(Small()),
        "plan3": json.loads(convslim.plan(Three(), torch.randn(1, 3, 16, 16), to="dwsep", rank=1).to_json()),
        "groups3": _plan_json(Small(), form="grouped", setting={"groups": 3}),
        "rank_half": _plan_json(Small(), setting={"rank": 1.5}),
        "rank_text": _plan_json(Small(), setting={"rank": "2"}),
        "unknown_key": _plan_json(Small(), setting={"rank": 1, "ranks": 2}),
        "unknown_form": _plan_json(Small(), form="dwsap"),
        "setting_list": _plan_json(Small(), setting=[1]),
        "octave_bad": octave,
        "layers_obj": {**_plan_json(Small()), "layers": {}},
    }
    for name, plan in plans.items():
        (w / f"{name}.json").write_text(json.dumps(plan))
        files[name] = str(w / f"{name}.json")
    (w / "latin1.json").write_bytes(json.dumps(plans["plan"]).replace("conv2", "conv\xe9").encode("latin-1"))
    files["latin1"] = str(w / "latin1.json")
    files["src"] = str(_output_folder(w / "src", plans["plan"]))
    files["corrupt"] = str(_output_folder(w / "corrupt", plans["plan"], weights=b"PK\x03\x04 not a zip" * 20))
    latin = _output_folder(w / "latin_src", plans["plan"])
    (latin / "plan.json").write_bytes((w / "latin1.json").read_bytes())
    files["latin_src"] = str(latin)
    return files


@pytest.fixture
def private(tmp_path, monkeypatch) -> tuple[Path, Path]:
    """A private working folder (the cwd) and $TMPDIR, both empty: a run must leave them so."""
    work, tmp = tmp_path / "work", tmp_path / "tmp"
    work.mkdir()
    tmp.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    return work, tmp


def _argv(template: str, files: dict[str, str]) -> list[str]:
    for macro, text in MACROS.items():
        template = template.replace(macro, text)
    return [token.format(**files) for token in template.split()]


@pytest.mark.parametrize(("argv", "code", "fragment"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_refused_in_one_line_leaving_nothing(world, private, tmp_path, capsys, argv, code, fragment):
    files = {**world, "out": str(tmp_path / "out"), "plan_out": str(tmp_path / "plan.json")}
    got = main(_argv(argv, files))
    err = capsys.readouterr().err
    assert got == code, err
    assert fragment.format(**files) in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists() and not (tmp_path / "plan.json").exists()
    assert [list(folder.iterdir()) for folder in private] == [[], []]


def test_nan_outputs_never_pass(world, private, tmp_path, capsys):
    """1: a model whose output is NaN gave "max abs err 0 ... ok" (Python's max drops NaN); now it fails."""
    out = tmp_path / "out"
    argv = _argv(
        "compress {small} --arch {models}:log_out --input-shape 1,3,16,16 OUT", {**world, "out": str(out)}
    )
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert "outputs hold NaN or infinite values" in captured.err
    report = json.loads((out / "report.json").read_text())
    assert report["passed"] is False and report["parity"]["onnx_vs_torch"]["passed"] is False
    assert report["parity"]["compressed_vs_original"]["finite"] is False
    assert [list(folder.iterdir()) for folder in private] == [[], []]


def _edited(world, rank) -> convslim.core.Plan:
    plan = json.loads(Path(world["plan"]).read_text())
    for layer in plan["layers"]:
        layer["setting"]["rank"] = rank
    return convslim.core.Plan.from_json(json.dumps(plan))


def test_an_edited_plan_reports_what_was_built(world):
    """3: ranks edited from 1 to 2 give exactly --rank 2's report, not the file's rank-1 numbers; a rank of 1000
    is built (and reported) at each conv's maximum, with that rank's costs."""
    model, x = Small(), torch.randn(1, 3, 16, 16)
    edited = convslim.compress(model, x, plan=_edited(world, 2), verify=False)
    asked = convslim.compress(model, x, to="dwsep", rank=2, verify=False)
    assert edited.report.totals == asked.report.totals and edited.report.layers == asked.report.layers
    huge = convslim.compress(model, x, plan=_edited(world, 1000), verify=False)
    built = [d.setting["rank"] for d in huge.plan.layers]
    assert built == [8, 8] == [row["setting"]["rank"] for row in huge.report.layers]  # min(T, M, K²)
    at_max = convslim.compress(model, x, plan=_edited(world, 8), verify=False)
    assert huge.report.totals == at_max.report.totals != edited.report.totals


def _kill_self_during(monkeypatch, module, name: str) -> None:
    real = getattr(module, name)

    def then_sigterm(*args, **kwargs):
        result = real(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)
        return result

    monkeypatch.setattr(module, name, then_sigterm)


@pytest.mark.parametrize("where", ["export", "planning"])
def test_sigterm_outside_fine_tuning_is_ctrl_c(world, private, tmp_path, capsys, monkeypatch, where):
    """6: SIGTERM during export or planning: temporary folders removed, "nothing was written", exit 143."""
    import convslim.planner.budgeted as budgeted
    import convslim.verify.pipeline as pipeline

    if where == "export":
        _kill_self_during(monkeypatch, pipeline, "export_model")
        argv = "compress SMALL OUT"
    else:
        monkeypatch.setenv("CONVSLIM_CACHE_DIR", str(tmp_path / "cache"))
        _kill_self_during(monkeypatch, budgeted, "measure_candidates")
        argv = "plan SMALL --to auto --target-speedup 2 --plan-batch 2 --quiet --out {plan_out}"
    files = {**world, "out": str(tmp_path / "out"), "plan_out": str(tmp_path / "plan.json")}
    assert main(_argv(argv, files)) == 143
    assert capsys.readouterr().err.strip().endswith("stopped by SIGTERM; nothing was written")
    assert not (tmp_path / "out").exists() and not (tmp_path / "plan.json").exists()
    assert [list(folder.iterdir()) for folder in private] == [[], []]
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # main put the default back


def test_a_second_sigterm_aborts_fine_tuning_and_the_first_names_its_stage():
    """6: the first SIGTERM stops training (in the stage it came in); a second aborts, like a second Ctrl-C."""
    from convslim.core.signals import Interrupted, exit_code
    from convslim.finetune.stopping import interruptible

    with pytest.raises(Interrupted) as caught, interruptible() as stop:
        stop.stage = "stage 2"
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested and stop.stopped_in == "stage 2"
        os.kill(os.getpid(), signal.SIGTERM)
    assert exit_code(caught.value) == 143


def _rename_refusing(monkeypatch, target: Path):
    """``Path.rename`` as the kernel does it for a mount point: EBUSY for the mount point itself."""
    real = Path.rename

    def rename(self, new):
        if target in (Path(self).resolve(), Path(new).resolve()):
            raise OSError(errno.EBUSY, "Device or resource busy", str(new))
        return real(self, new)

    monkeypatch.setattr(Path, "rename", rename)


@pytest.mark.parametrize("detected", [True, False])
def test_out_on_an_empty_mount_point_is_written_into(world, tmp_path, monkeypatch, detected):
    """4: --out on an empty writable mount point failed on the final rename, after all the work; now the files are
    moved into it (``detected``: ``os.path.ismount`` says so; else a bind mount it misses, found by EBUSY)."""
    out = tmp_path / "mnt"
    out.mkdir()
    _rename_refusing(monkeypatch, out)
    monkeypatch.setattr(os.path, "ismount", lambda path: detected and Path(path).resolve() == out)
    assert main(_argv("compress SMALL OUT", {**world, "out": str(out)})) == 0
    names = sorted(p.name for p in out.iterdir())
    assert "report.json" in names and "model.onnx" in names and not [n for n in names if n.startswith(".")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mnt"]  # no staging folder left beside it


def test_held_out_share_of_data_is_scored_not_trained_on(world, tmp_path, capsys):
    """7: without --val-data, 10 % of --data (stratified) is held out of fine-tuning and scored on; on fewer than
    100 images the terminal says so instead of printing a number."""
    from convslim.inputs.data import ArrayData
    from convslim.inputs.sets import HeldOut, split_held_out

    y = torch.arange(200) % 4
    train, held = split_held_out(ArrayData(torch.arange(200.0).view(200, 1), y, "d.npz"), HeldOut(0.1))
    assert len(held) == 20 and torch.bincount(held.y).tolist() == [5, 5, 5, 5]
    assert not set(held.x.flatten().tolist()) & set(train.x.flatten().tolist()) and len(train) == 180
    out = tmp_path / "out"
    argv = _argv(
        "compress SMALL --data {train} --finetune-steps 2 --batch-size 4 OUT", {**world, "out": str(out)}
    )
    assert main(argv) == 0
    terminal = capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert (
        report["finetune"]["accuracy"]["n"] == 1
        and "held out of fine-tuning" in report["finetune"]["accuracy"]["data"]
    )
    assert "held out of fine-tuning" in report["deploy"]["accuracy"]["data"]
    assert "fine-tuning: top1 not shown: 1 image(s) are too few" in terminal
    assert "original_fp32" not in terminal.split("held out of fine-tuning")[1].splitlines()[0]


def test_another_batch_short_of_the_target_names_plan_batch():
    """8: planned for 2x at batch 32, 2.05x there and 1.01x at batch 1: the summary says so."""
    from convslim.report import Report
    from convslim.report.sections import DeploySection, PlanSection, RewriteSection

    def entry(speedup):
        lat = {"ms": 1.0, "spread": 0.01, "runs": 10}
        pair = {"speedup": speedup, "speedup_iqr": [speedup, speedup], "rounds": 3, "runs": 30}
        return {
            "latency": {"original_fp32": lat, "compressed_fp32": lat},
            "speedup": {"vs_original_fp32": {"compressed_fp32": pair}},
        }

    planning = {
        "budget": {"target_speedup": 2.0},
        "batch": 32,
        "predicted_speedup": 2.1,
        "predicted_error": 0.1,
    }
    planning.update(planning_s=1.0, cache_hits=0, cache_misses=0, reached=True)
    totals = {"params_before": 1, "params_after": 1, "macs_before": 1, "macs_after": 1}
    deploy = DeploySection("cpu", "fp32", {}, {}, speed={"1": entry(1.01), "32": entry(2.05)})
    report = Report(
        PlanSection("auto", MappingProxyType({}), planning), RewriteSection("fx", (), totals), deploy=deploy
    )
    warnings = [line for line in report.summary().splitlines() if "WARNING" in line]
    assert len(warnings) == 1 and "batch 1" in warnings[0] and "--plan-batch 1" in warnings[0]


def test_static_shape_is_planned_at_the_batch_of_its_input(monkeypatch):
    """8: a --static-shape model runs only at its input's batch, so the planner measures there, not at 32."""
    import convslim.api as api
    from convslim.errors import UsageError
    from convslim.runtime.deploy import DeploySettings
    from convslim.runtime.export import ExportSettings

    seen = {}

    def planned(prepared, **options):
        seen.update(options)
        raise UsageError("stop here")

    monkeypatch.setattr(api, "_plan_on_rank0", planned)
    deploy = DeploySettings(export=ExportSettings(static_shape=True))
    with pytest.raises(UsageError, match="stop here"):
        convslim.compress(Small(), torch.randn(2, 3, 16, 16), to="auto", target_speedup=2.0, deploy=deploy)
    assert seen["batch"] == 2
