"""Property test of ``semgrad-guard score --input``: any mix of lines (valid pairs, bad JSON, wrong fields,
blank, undecodable, huge, deeply nested) gives exactly one output line per input line, in order, each a
score or an invalid record with a short reason; the previous output file is replaced whole."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any
from unittest import mock

from hypothesis import event, given
from hypothesis import strategies as st

from semgrad_guard import SemGradScorer, errors
from semgrad_guard.cli import main
from tests.reliability.strategies import hostile_text, json_values, messages

CODES = {getattr(errors, name).code for name in errors.__all__} | {"invalid_record", "blank_line"}

Spec = tuple[str, Any]

one_line_text = hostile_text.map(lambda text: text.replace("\n", " "))
line_specs: st.SearchStrategy[Spec] = st.one_of(
    st.tuples(st.just("pair"), st.tuples(st.one_of(hostile_text, messages), hostile_text, st.booleans())),
    st.tuples(
        st.just("pair"), st.tuples(st.just("What is 2+2?"), st.sampled_from(["4", "four"]), st.just(1))
    ),
    st.tuples(st.just("object"), st.dictionaries(st.sampled_from(["prompt", "answer", "x"]), json_values)),
    st.tuples(st.just("text"), one_line_text),
    st.tuples(st.just("bytes"), st.binary(max_size=24).map(lambda raw: raw.replace(b"\n", b""))),
    st.tuples(st.just("blank"), st.sampled_from(["", " ", "\t", "\r", "\ufeff"])),
    st.tuples(st.just("nested"), st.integers(min_value=1, max_value=200_000)),
    st.tuples(st.just("huge"), st.integers(min_value=10_000, max_value=400_000)),
    st.tuples(st.just("constant"), st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999"])),
    st.tuples(st.just("bom"), st.just(None)),
)


def utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def render(spec: Spec, number: int) -> tuple[bytes, Any, bool]:
    """One input line (no line break), the id its output line must carry, and whether it may be scored."""
    kind, value = spec
    key = f"r{number}"
    if kind in ("pair", "object"):
        record = {"id": key, "prompt": value[0], "answer": value[1]} if kind == "pair" else value
        key = key if kind == "pair" else number
        try:
            text = json.dumps(record, allow_nan=False, ensure_ascii=kind == "object" or bool(value[2]))
        except ValueError:  # NaN or infinity: not JSON, so the line is known by its number
            return json.dumps(record).encode(), number, False
        if not utf8(text):  # a raw lone surrogate: not UTF-8, so the line is known by its number
            return text.encode("utf-8", "surrogatepass"), number, False
        return text.encode(), key, True
    if kind in ("text", "blank"):
        return value.encode("utf-8", "surrogatepass"), number, False
    if kind == "bytes":
        return value, number, False
    if kind == "nested":
        return b"[" * value + b"]" * value, number, False
    if kind == "huge":
        return json.dumps({"id": key, "prompt": "q", "answer": "a" * value}).encode(), key, False
    if kind == "constant":
        return f'{{"id": "{key}", "prompt": "q", "answer": "a", "x": {value}}}'.encode(), number, False
    bom = "\ufeff" + json.dumps({"id": key, "prompt": "What is 2+2?", "answer": "4"})
    return bom.encode(), key if number == 1 else number, number == 1  # a BOM only starts a file


def run_cli(scorer: SemGradScorer, content: bytes) -> tuple[int, list[str], list[str]]:
    """``semgrad-guard score --input --output`` over ``content``, the scorer built once and shared."""
    with (
        tempfile.TemporaryDirectory() as folder,
        mock.patch("semgrad_guard.cli.SemGradScorer", lambda *args, **kwargs: scorer),
    ):
        source, sink = Path(folder, "in.jsonl"), Path(folder, "out.jsonl")
        source.write_bytes(content)
        sink.write_text("the previous output\n")
        argv = ["score", "--device", "cpu", "--batch-size", "3", "--input", str(source)]
        status = main([*argv, "--output", str(sink)])
        left = sorted(path.name for path in Path(folder).iterdir())
        return status, sink.read_text(encoding="utf-8").splitlines(), left


@given(specs=st.lists(line_specs, max_size=10), newline=st.sampled_from(["\n", "\r\n"]), last=st.booleans())
def test_one_output_line_per_input_line_in_order(
    rel_scorer: SemGradScorer, specs: list[Spec], newline: str, last: bool
) -> None:
    lines = [render(spec, number) for number, spec in enumerate(specs, start=1)]
    content = newline.encode().join(raw for raw, _, _ in lines) + (
        newline.encode() if last and lines else b""
    )
    if not last and lines and lines[-1][0] == b"":
        lines.pop()  # an empty last line without a line break is no line at all

    status, out, left = run_cli(rel_scorer, content)

    assert status == 0 and left == ["in.jsonl", "out.jsonl"]  # no partial file left behind
    assert len(out) == len(lines), "exactly one output line per input line"
    for text, (_, key, scorable) in zip(out, lines, strict=True):
        row = json.loads(text)
        assert row["id"] == key, "output lines keep the input's order"
        if row["valid"]:
            assert scorable and row["semgrad"] is not None
        else:
            reason = row["invalid_reason"]
            assert reason.split(":", 1)[0] in CODES and len(reason) < 400, reason
        event("scored" if row["valid"] else row["invalid_reason"].split(":", 1)[0])
