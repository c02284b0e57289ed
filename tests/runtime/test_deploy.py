"""Which compressed file the report tells the user to ship for an int8 target."""

from __future__ import annotations

from convslim.runtime.deploy import recommendation


def _speed(**by_batch):
    return {
        b: {
            "speedup": {
                "vs_original_fp32": {"compressed_fp32": {"speedup": f}, "compressed_int8": {"speedup": i}}
            }
        }
        for b, (f, i) in by_batch.items()
    }


SCORES = {"metric": "top1", "compressed_fp32": 0.83, "compressed_int8": 0.828}


def test_int8_slower_everywhere_recommends_fp32_with_the_numbers():
    advice = recommendation(_speed(**{"1": (1.59, 1.25), "32": (2.82, 1.90)}), SCORES)
    assert advice["file"] == "model.onnx"
    assert "slower" in advice["why"] and "batch 32: 1.90x int8 vs 2.82x fp32" in advice["why"]


def test_int8_faster_somewhere_and_accurate_recommends_int8():
    advice = recommendation(_speed(**{"1": (1.5, 1.4), "32": (2.0, 2.6)}), SCORES)
    assert advice["file"] == "model.int8.onnx"


def test_int8_that_lost_accuracy_is_not_recommended_even_when_faster():
    scores = {**SCORES, "compressed_int8": 0.80}
    advice = recommendation(_speed(**{"32": (2.0, 2.6)}), scores)
    assert advice["file"] == "model.onnx" and "lost 3.0 pt top1" in advice["why"]


def test_no_int8_twin_no_advice():
    speed = {"32": {"speedup": {"vs_original_fp32": {"compressed_fp32": {"speedup": 2.0}}}}}
    assert recommendation(speed, None) is None


def test_int8_file_with_no_int8_node_recommends_fp32():
    advice = recommendation(_speed(**{"32": (2.0, 2.1)}), SCORES, quantized=0)
    assert advice["file"] == "model.onnx" and "kept every node in fp32" in advice["why"]
