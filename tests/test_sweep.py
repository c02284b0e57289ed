"""``convslim sweep``: one ``compress --to auto --target-speedup t`` per target, a table and a plot; a point that
fails with a convslim error is recorded and the sweep goes on; Ctrl-C leaves the finished points on disk."""

from __future__ import annotations

import functools
import json
import sys
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from convslim import tradeoff
from convslim.cli import main
from convslim.errors import UsageError
from convslim.report.report import Report
from convslim.report.sections import FinetuneSection
from tests.cli_models import MODELS, Small

TARGETS = ("1.5",)  # one real point (about 15 s); the tests of many points stand a canned one in


def _files(folder: Path) -> dict[str, Path]:
    weights, train = folder / "small.pt", folder / "train.npz"
    torch.save(Small(32).state_dict(), weights)
    rng = np.random.default_rng(0)
    np.savez(train, x=rng.random((32, 3, 16, 16), dtype=np.float32), y=rng.integers(0, 10, 32))
    return {"weights": weights, "train": train}


def _argv(files: dict[str, Path], out: Path, targets: str = ",".join(TARGETS)) -> list[str]:
    return [
        "sweep",
        str(files["weights"]),
        "--arch",
        f"{MODELS}:small",
        "--arch-kwargs",
        '{"width": 32}',
        "--input-shape",
        "1,3,16,16",
        "--targets",
        targets,
        "--data",
        str(files["train"]),
        "--finetune-steps",
        "2",
        "--batch-size",
        "8",
        "--plan-batch",
        "4",
        "--batch-sizes",
        "4",
        "--quiet",
        "--out",
        str(out),
    ]


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """One real sweep on the fake timer (module-scoped, so set here: ``tests/fake_timer.py``), shared by the tests
    below."""
    import convslim.planner as planner
    from convslim.runtime import timing
    from tests.fake_timer import FakeClock

    folder = tmp_path_factory.mktemp("sweep")
    files = _files(folder)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(timing, "CLOCK", FakeClock())
        mp.setenv("CONVSLIM_CACHE_DIR", str(folder / "cache"))
        mp.setattr(planner, "plan_to_budget", functools.partial(planner.plan_to_budget, seconds=0.02))
        code = main(_argv(files, folder / "out"))
    return SimpleNamespace(code=code, out=folder / "out", files=files)


def test_each_target_is_a_compress_point_in_the_table(swept):
    summary = json.loads((swept.out / "sweep.json").read_text())
    points = summary["points"]
    assert [p["target"] for p in points] == [float(t) for t in TARGETS]
    assert [p["status"] for p in points] == ["ok"] and swept.code == 0
    for p in points:
        report = json.loads((Path(p["folder"]) / "report.json").read_text())
        assert report["run"]["compress_options"]["to"] == "auto"
        assert report["run"]["compress_options"]["target_speedup"] == p["target"]
        assert Path(p["folder"]).name == f"speedup-{p['target']:g}"
        assert p["speedups"].keys() == {"4"} and p["macs_fraction"] < 1 and p["metric"] == "top1"
        assert 0 <= p["accuracy"] <= 1 and p["minutes"] > 0
        assert p["speedups"]["4"] >= 1.0  # the planner's measurement reached the target
    original, int8 = summary["references"]  # "just quantize": the original in int8, scored and timed
    assert original["name"] == "original" and original["speedup"] == 1.0
    assert int8["name"] == "original int8" and int8["speedup"] > 0 and int8["batch"] == 4
    assert 0 <= int8["accuracy"] <= 1 and int8["fp32_accuracy"] == original["accuracy"]
    assert (
        f"original int8: {int8['accuracy']:.2%} top1 at {int8['speedup']:.2f}x"
        in (swept.out / "sweep.md").read_text()
    )
    table = (swept.out / "sweep.md").read_text()
    assert "| target | speedup @ batch 4 | top1 | MACs | minutes | status |" in table
    assert [line.split("|")[1].strip() for line in table.splitlines() if line.startswith("| 1.")] == ["1.5x"]


def test_the_plot_is_written_and_embedded(swept):
    pytest.importorskip("matplotlib")
    assert (swept.out / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "![accuracy vs measured speedup](sweep.png)" in (swept.out / "sweep.md").read_text()


def _canned(swept) -> SimpleNamespace:
    """A finished point's result (from the real sweep's report.json), for a stand-in ``compress``."""
    (folder,) = sorted(swept.out.glob("speedup-*"))
    return SimpleNamespace(report=Report.from_dict(json.loads((folder / "report.json").read_text())))


def test_a_failing_point_is_recorded_and_the_sweep_goes_on(swept, tmp_path, monkeypatch, capsys):
    canned, calls = _canned(swept), []

    def compress(model, inputs, **kwargs):
        calls.append(kwargs)
        if kwargs["target_speedup"] == 2:
            raise UsageError("nothing was rewritten: no layer of this model gets faster")
        return canned

    monkeypatch.setattr(tradeoff, "compress", compress)
    out = tmp_path / "out"
    assert main(_argv(swept.files, out, "1.5,2,3")) == 0
    assert [c["target_speedup"] for c in calls] == [1.5, 2, 3] and {c["to"] for c in calls} == {"auto"}
    points = json.loads((out / "sweep.json").read_text())["points"]
    assert [p["status"] for p in points] == ["ok", "failed", "ok"]
    assert points[1]["reason"].startswith("nothing was rewritten") and points[1]["folder"] is None
    assert (
        "| 2x |" in (out / "sweep.md").read_text()
        and "failed: nothing was rewritten" in (out / "sweep.md").read_text()
    )
    assert "convslim: 2 of 3 sweep point(s) ok" in capsys.readouterr().out


def test_every_point_failing_exits_2_with_a_message(swept, tmp_path, monkeypatch, capsys):
    def compress(model, inputs, **kwargs):
        raise UsageError("budget not reachable")

    monkeypatch.setattr(tradeoff, "compress", compress)
    out = tmp_path / "out"
    assert main(_argv(swept.files, out)) == 2
    assert "no point of the sweep succeeded" in capsys.readouterr().err
    assert {p["reason"] for p in json.loads((out / "sweep.json").read_text())["points"]} == {
        "budget not reachable"
    }


def test_a_bug_propagates(swept, tmp_path, monkeypatch):
    def compress(model, inputs, **kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(tradeoff, "compress", compress)
    with pytest.raises(ZeroDivisionError):
        main(_argv(swept.files, tmp_path / "out"))


def test_ctrl_c_at_the_second_point_leaves_the_first_in_sweep_json(swept, tmp_path, monkeypatch, capsys):
    canned = _canned(swept)

    def compress(model, inputs, **kwargs):
        if kwargs["target_speedup"] == 1.5:
            raise KeyboardInterrupt
        return canned

    monkeypatch.setattr(tradeoff, "compress", compress)
    out = tmp_path / "out"
    assert main(_argv(swept.files, out, "1.2,1.5,2")) == 130
    assert "finished points are in" in capsys.readouterr().err
    summary = json.loads((out / "sweep.json").read_text())
    assert [p["target"] for p in summary["points"]] == [1.2] and summary["points"][0]["status"] == "ok"
    assert summary["interrupted_at_target"] == 1.5
    assert "Interrupted during target 1.5x" in (out / "sweep.md").read_text()


def test_without_matplotlib_the_table_says_how_to_get_the_plot(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib → ImportError
    point = tradeoff.SweepPoint(2.0, "ok", 0.5, speedups={"1": 1.8}, accuracy=0.9, metric="top1")
    result = tradeoff.SweepResult([point], [{"name": "original", "speedup": 1.0, "accuracy": 0.92}])
    tradeoff.write_summary(tmp_path, result)
    assert not (tmp_path / "sweep.png").exists()
    table = (tmp_path / "sweep.md").read_text()
    assert tradeoff.PLOT_HINT in table and "sweep.png)" not in table
    assert "| 2x | 1.80x | 90.00% | — | 0.5 | ok |" in table
    assert json.loads((tmp_path / "sweep.json").read_text())["files"].keys() == {"sweep.json", "sweep.md"}


@pytest.mark.parametrize("targets", ["2,2.0", "1.5,x", "0,2"])
def test_bad_targets_are_refused_before_any_work(tmp_path, capsys, targets):
    files = _files(tmp_path)
    out = tmp_path / "out"
    assert main(_argv(files, out, targets)) == 2
    assert "targets" in capsys.readouterr().err and not out.exists()


def test_the_sweep_sets_to_and_the_budget_itself(tmp_path):
    settings = tradeoff.SweepSettings((2,), tmp_path / "out", compress_options={"to": "dwsep"})
    with pytest.raises(UsageError, match="to are set by the sweep"):
        tradeoff.sweep(Small(), torch.randn(1, 3, 16, 16), settings)
    assert not (tmp_path / "out").exists()


def test_a_fine_tune_stopped_by_a_signal_ends_the_sweep_after_writing_its_point(
    swept, tmp_path, monkeypatch, capsys
):
    canned = _canned(swept)
    stopped = {**(canned.report.finetune or {}), "interrupted": True, "stopped_by": "SIGTERM"}
    canned.report = replace(canned.report, finetune=FinetuneSection(stopped))
    calls = []
    monkeypatch.setattr(tradeoff, "compress", lambda model, inputs, **kw: calls.append(kw) or canned)
    out = tmp_path / "out"
    argv = [a for a in _argv(swept.files, out, "1.2,2") if a != "--quiet"]
    assert main(argv) == 143 and len(calls) == 1
    assert "[1/2] target 1.2x: interrupted" in capsys.readouterr().err
    summary = json.loads((out / "sweep.json").read_text())
    assert [p["status"] for p in summary["points"]] == ["interrupted"] and summary["stopped_by"] == "SIGTERM"


def test_int8_sweep_references_sit_on_the_fp32_scale():
    """Under cpu-int8 every point's speedup is against the fp32 original, so the int8 original sits at its own
    measured speedup over it, not at 1x."""
    from types import SimpleNamespace

    from convslim.tradeoff import references

    speed = {"32": {"speedup": {"vs_original_fp32": {"original_int8": {"speedup": 1.5}}}}}
    deploy = {"precision": "int8", "speed": speed, "accuracy": {"original_fp32": 0.91, "original_int8": 0.90}}
    refs = references(SimpleNamespace(deploy=deploy, planning={"batch": 32}))
    assert [(r["name"], r["speedup"], r["accuracy"]) for r in refs] == [
        ("original", 1.0, 0.91),
        ("original int8", 1.5, 0.90),
    ]
