"""The speed benchmark runs end to end on a tiny model and writes its tables (no timing is asserted)."""

from __future__ import annotations

import json
from pathlib import Path

from semgrad_guard.cli import main


def test_bench_speed_writes_every_table(tiny_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "speed"
    status = main(
        [
            "bench-speed",
            "--model",
            str(tiny_dir),
            "--out",
            str(out),
            "--lengths",
            "32",
            "96",
            "--answer-tokens",
            "8",
            "--repeats",
            "1",
            "--callers",
            "1",
            "3",
            "--throughput-pairs",
            "6",
            "--sampling-questions",
            "1",
        ]
    )
    assert status == 0
    results = json.loads((out / "speed.json").read_text())
    assert [row["prompt_tokens"] for row in results["latency"]] == [32, 96]
    for row in results["latency"]:
        assert row["answer_tokens"] == 8
        assert all(row[f"{mode}_s"] > 0 for mode in ("floor", "naive", "fast"))
    short, long = results["latency"]
    assert long["fast_flops"] - short["fast_flops"] > 0 and long["floor_flops"] > short["floor_flops"]
    assert all(row["cache_reused"] and row["answer_tokens"] == 8 for row in results["self_scoring"])
    assert [row["callers"] for row in results["throughput"]] == [1, 3]
    assert results["throughput"][0]["speedup"] == 1.0
    assert results["sampling"]["samples"] == 10 and results["sampling"]["sampling_s"] > 0
    table = (out / "speed.md").read_text()
    assert "| 96 |" in table and "Self-scoring" in table and "callers" in table


def test_shape_speed_fits_depths_and_checks_full_depth(tmp_path: Path) -> None:
    """A published shape at two reduced depths and its full depth: the fit, its error and the memory sweep."""
    from semgrad_guard.evaluation.speed import ShapeSpeedConfig, run_shape_speed

    out = tmp_path / "shape"
    config = ShapeSpeedConfig(
        out=out,
        shape="smollm2-135m",
        depths=(2, 4),
        full_depth=True,
        prompt_lengths=(24,),
        answer_tokens=4,
        repeats=1,
        memory_answer_tokens=(8,),
        memory_batch_sizes=(2,),
    )
    results = run_shape_speed(config)
    saved = json.loads((out / "shape.json").read_text())
    assert saved["built_vocab"] == 49152 and saved["shape"]["num_hidden_layers"] == 30
    assert {(row["depth"], row["mode"]) for row in results["summary"]} == {
        (depth, mode) for depth in (2, 4, 30) for mode in ("floor", "fast", "naive")
    }
    for row in results["summary"]:
        assert row["seconds"] > 0 and row["cpu_seconds"] > 0
        if row["mode"] != "floor":
            assert row["saved_mib"] == row["saved_formula_mib"]  # the formula is exact
    assert [(fit["prompt_tokens"], fit["mode"]) for fit in results["fits"]] == [
        (24, "floor"),
        (24, "fast"),
        (24, "naive"),
    ]
    for fit in results["fits"]:
        assert fit["seconds"]["measured"] > 0 and fit["seconds"]["error"] is not None
        assert fit["peak_mib"] is None or fit["peak_mib"]["predicted"] is not None
    sweep = {
        (row["answer_tokens"], row["batch"], row["depth"], row["mode"]) for row in results["memory_sweep"]
    }
    assert (8, 1, 4, "naive") in sweep and (4, 2, 2, "fast") in sweep
    table = (out / "shape.md").read_text()
    assert "Depth cost model" in table and "Memory sweep" in table and "| 24 | 30 | fast |" in table


def test_bench_speed_on_a_shape_runs_the_chosen_sections(tmp_path: Path) -> None:
    from semgrad_guard.evaluation.speed import SpeedConfig, run_speed

    results = run_speed(
        SpeedConfig(
            out=tmp_path / "speed",
            shape="smollm2-135m",
            layers=2,
            device="cpu",
            prompt_lengths=(32,),
            answer_tokens=4,
            repeats=1,
            sections=("latency",),
        )
    )
    assert results["model"] == "random:smollm2-135m"
    assert [row["prompt_tokens"] for row in results["latency"]] == [32]
    assert results["self_scoring"] == [] and results["throughput"] == [] and results["sampling"] is None
    table = (tmp_path / "speed" / "speed.md").read_text()
    assert "random weights" in table.lower() and "Self-scoring" not in table
