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
