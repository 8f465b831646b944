"""The speed benchmark runs end to end on a tiny model and writes its tables (no timing is asserted)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

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
    assert all(row["reused"] == 0 for row in results["throughput"])  # no round reads an earlier one's scores
    assert results["sampling"]["samples"] == 10 and results["sampling"]["sampling_s"] > 0
    table = (out / "speed.md").read_text()
    assert "| 96 |" in table and "Self-scoring" in table and "callers" in table


def test_bench_speed_shape_depths_fits_checks_full_depth_and_reports(tmp_path: Path) -> None:
    """`bench-speed --shape --depths --full-depth`: the fit, its error, the memory sweep; then the report."""
    from semgrad_guard.evaluation import speed

    out = tmp_path / "shape"
    flags = ["--shape", "smollm2-135m", "--depths", "2", "4", "--full-depth", "--device", "cpu"]
    flags += ["--lengths", "24", "--answer-tokens", "4", "--repeats", "1"]
    flags += ["--memory-answers", "8", "--memory-batches", "2"]
    assert main(["bench-speed", "--out", str(out), *flags]) == 0
    results = json.loads((out / "shape.json").read_text())
    assert results["built_vocab"] == 49152 and results["shape"]["num_hidden_layers"] == 30
    assert results["config"]["repeats"] == 1 and results["config"]["prompt_lengths"] == [24]
    assert {(row["depth"], row["mode"]) for row in results["summary"]} == {
        (depth, mode) for depth in (2, 4, 30) for mode in ("floor", "fast", "naive")
    }
    for row in results["summary"]:
        assert row["seconds"] > 0 and row["cpu_seconds"] > 0
        if row["mode"] != "floor":
            assert row["saved_mib"] == row["saved_formula_mib"]  # the formula is exact
            assert row["peak_model_mib"] > row["saved_mib"]
    assert [(fit["prompt_tokens"], fit["mode"]) for fit in results["fits"]] == [
        (24, "floor"),
        (24, "fast"),
        (24, "naive"),
    ]
    for fit in results["fits"]:
        assert fit["seconds"]["measured"] > 0 and fit["seconds"]["error"] is not None
        assert fit["cpu_seconds"]["predicted"] > 0
    sweep = {
        (row["answer_tokens"], row["batch"], row["depth"], row["mode"]) for row in results["memory_sweep"]
    }
    assert (8, 1, 4, "naive") in sweep and (4, 2, 2, "fast") in sweep
    table = (out / "shape.md").read_text()
    assert "Depth cost model" in table and "Memory sweep" in table and "| 24 | 30 | fast |" in table

    for row in results["rows"]:  # a stale model column is recomputed from the raw rows
        row.pop("peak_model_mib", None)
    (out / "shape.json").write_text(json.dumps(results))
    speed.main([str(out), "--out", str(tmp_path / "report.md")])
    rewritten = json.loads((out / "shape.json").read_text())
    assert rewritten["summary"] == results["summary"] and rewritten["fits"] == results["fits"]
    report = (tmp_path / "report.md").read_text()
    assert "| smollm2-135m | 24 | fast | 30 | 2, 4 |" in report  # the full-depth check of the time model
    assert (
        "Peak memory, measured and modelled" in report
        and "| smollm2-135m | 2 | 24 | 8 | 1 | naive |" in report
    )
    assert "| qwen2.5-7b | 4096 | 32 | 8 |" in report  # the modelled GPU sizing


@pytest.mark.parametrize(
    ("flags", "problem"),
    [
        (["--shape", "gpt-5"], "unknown shape"),
        (["--depths", "2", "4"], "shape: Field required"),
        (["--shape", "smollm2-135m", "--model", "x"], "not both"),
        (["--layers", "2"], "shape only"),
    ],
)
def test_bench_speed_refuses_bad_shape_flags(
    flags: list[str], problem: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["bench-speed", "--out", str(tmp_path), *flags]) == 2
    assert problem in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


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
