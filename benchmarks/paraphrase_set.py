"""More labelled answers for calibration: each dev question asked once more, in its first paraphrase.

Run from the repository root (no model; a second run writes the same files)::

    python benchmarks/paraphrase_set.py --out benchmarks/data

writes ``sciq_para_dev.jsonl`` and ``truthfulqa_para_dev.jsonl``: for every dev question one row whose
``question`` is the question's first paraphrase (the authors' rewrites, see ``shared/data/README.md``), with
the same reference answers and ``source_question`` set to the original question. A model's answers to these
are new answers to the same facts, so they are not independent of its answers to the originals:
``semgrad-guard calibrate`` keeps every row of one source question in the same split.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from semgrad_guard.evaluation.datasets import load_qa


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/data"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for name in ("sciq", "truthfulqa"):
        rows = [
            {"question": item.paraphrases[0], "answers": item.answers, "source_question": item.question}
            for item in load_qa(name)
        ]
        path = args.out / f"{name}_para_dev.jsonl"
        path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
        sys.stdout.write(f"wrote {len(rows)} rows to {path}\n")


if __name__ == "__main__":
    main()
