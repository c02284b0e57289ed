"""The terminal lines for the nodes int8 kept in fp32: one per kind and reason, ratios as a range."""

from __future__ import annotations

from convslim.report.deploy import excluded_lines


def _entry(node, kind, ratio):
    return {"node": node, "kind": kind, "reason": f"int8 measured {ratio}x the fp32 time of this node alone"}


def test_same_kind_and_reason_become_one_line_with_a_range():
    lines = excluded_lines(
        [
            _entry("a", "depthwise conv", "1.50"),
            _entry("b", "depthwise conv", "2.63"),
            _entry("c", "linear", "1.10"),
        ]
    )
    assert lines == [
        "2 depthwise convs kept in fp32: int8 measured 1.50-2.63x the fp32 time of this node alone",
        "c (linear) kept in fp32: int8 measured 1.10x the fp32 time of this node alone",
    ]


def test_different_reasons_stay_apart():
    asked = {"node": "d", "kind": "depthwise conv", "reason": "kept in fp32 as asked (--int8-exclude d)"}
    lines = excluded_lines([_entry("a", "depthwise conv", "1.50"), asked])
    assert len(lines) == 2 and lines[1].startswith("d (depthwise conv)")
