"""The RAG-shaped evidence set: each dev question asked twice, with and without a note stating its answer.

Run from the repository root (no model; a second run writes the same file)::

    python benchmarks/rag_set.py --per-set 40 --out benchmarks/data/rag_dev.jsonl

For the first ``--per-set`` questions of SciQ and of TruthfulQA dev, two rows each:

- ``supported``: the context is a one-sentence note built from one of the question's paraphrases and its
  first reference answer (``Notes: "<paraphrase>" - <answer>.``), so it states the answer;
- ``unsupported``: the context is the note of another question of the same set, drawn at random (seed 0),
  among those in which none of this question's references appears.

What this does not capture: real retrieved passages are longer, noisier and only partly relevant; here the
supporting note states the answer almost verbatim and the other note is plainly off-topic, so it measures
the easiest case of "the context does or does not hold the answer", not retrieval quality.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from semgrad_guard.evaluation.datasets import context_rows, load_qa


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-set", type=int, default=40, help="questions taken from each dev set")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/data/rag_dev.jsonl"))
    args = parser.parse_args()
    rows = [row for name in ("sciq", "truthfulqa") for row in context_rows(load_qa(name)[: args.per_set])]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(row.model_dump(exclude={"paraphrases"}), ensure_ascii=False) for row in rows]
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    sys.stdout.write(f"wrote {len(rows)} rows to {args.out}\n")


if __name__ == "__main__":
    main()
