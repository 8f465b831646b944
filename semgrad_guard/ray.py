"""Offline scoring on Ray Data: a dataset of (prompt, answer) rows through a pool of model actors.

``pip install "semgrad-guard[ray]"``. Each actor builds one :class:`~semgrad_guard.SemGradScorer` once and
scores the batches Ray hands it; rows keep their order, their ``id`` and every other column, and gain one
column per :class:`~semgrad_guard.Score` field. A row that cannot be scored stays, with ``valid=False`` and
its ``invalid_reason``. Nothing is written here: the caller writes the result (``write_parquet``,
``write_json``) or iterates it.

Example:
    >>> import ray
    >>> from semgrad_guard.ray import score_dataset
    >>> ds = ray.data.read_json("pairs.jsonl")  # rows {id, prompt, answer}  # doctest: +SKIP
    >>> score_dataset(ds, model="HuggingFaceTB/SmolLM2-135M-Instruct", actors=4, num_gpus=1).write_parquet(
    ...     "scores/"
    ... )  # doctest: +SKIP
"""

from __future__ import annotations

import json
import typing
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from semgrad_guard.results import Score

if TYPE_CHECKING:
    from ray.data import Dataset  # type: ignore[import-not-found, unused-ignore]

    from semgrad_guard.prompts import Prompt

__all__ = ["SCORE_COLUMNS", "score_dataset", "score_from_row", "score_pairs"]


def _arrow_kind(annotation: Any) -> str:
    """The Arrow kind a Score field is stored as: its type without ``None``, or JSON text for models."""
    kinds = [a for a in typing.get_args(annotation) if a is not type(None)] or [annotation]
    simple = {bool: "bool", int: "int64", float: "float64", str: "string"}
    return simple.get(kinds[0], "json") if len(kinds) == 1 else "json"


SCORE_COLUMNS: dict[str, str] = {
    name: _arrow_kind(field.annotation) for name, field in Score.model_fields.items()
}
"""The columns added to each row, named as the Score fields: ``bool``, ``int64``, ``float64``, ``string``;
``json`` (the ``profile``) is stored as JSON text."""


def _arrow_type(kind: str) -> Any:
    import pyarrow as pa  # type: ignore[import-untyped, unused-ignore]

    return {"bool": pa.bool_(), "int64": pa.int64(), "float64": pa.float64()}.get(kind, pa.string())


def score_from_row(row: Mapping[str, Any]) -> Score:
    """The :class:`Score` a scored row holds (its JSON columns read back)."""
    values: dict[str, Any] = {name: row.get(name) for name in SCORE_COLUMNS}
    for name, kind in SCORE_COLUMNS.items():
        text = values[name]
        if kind == "json" and isinstance(text, str):
            values[name] = json.loads(text)
    return Score.model_validate(values)


def _prompt(value: Any) -> Any:
    """A prompt as Arrow gives it back: messages may carry ``None`` for keys only other rows have."""
    if isinstance(value, list):
        return [
            {k: v for k, v in message.items() if v is not None} if isinstance(message, dict) else message
            for message in value
        ]
    return value


class _ScoreBatch:
    """A Ray Data actor: one scorer, built once, scoring every batch it is handed."""

    def __init__(
        self,
        model: str | None,
        options: Mapping[str, Any],
        threads: int | None,
        json_pairs: bool = False,
    ) -> None:
        from semgrad_guard.scorer import SemGradScorer

        if threads is not None:
            import torch

            torch.set_num_threads(threads)
        self.scorer = SemGradScorer(model, **dict(options)).load()
        self.json_pairs = json_pairs

    def _score(self, pairs: list[tuple[Prompt, str]]) -> list[Score]:
        """Scores in order; if a batch fails unexpectedly, each pair alone: a fault stays its row's."""
        if not pairs:
            return []
        try:
            return self.scorer.score_batch(pairs, errors="mark")
        except Exception as exc:  # whatever it is, one row's fault must not cost the others their scores
            if len(pairs) == 1:
                reason = f"error: {type(exc).__name__}: {' '.join(str(exc).split())[:500]}"
                return [Score.invalid(reason, model=self.scorer.model_name)]
        return [score for pair in pairs for score in self._score([pair])]

    def __call__(self, table: Any) -> Any:
        if self.json_pairs:
            import pyarrow as pa  # type: ignore[import-untyped, unused-ignore]

            pairs = [tuple(json.loads(text)) for text in table.column("pair").to_pylist()]
            scores = self._score(pairs)
            return pa.table({"score": pa.array([s.model_dump_json() for s in scores], pa.string())})
        for column in ("prompt", "answer"):
            if column not in table.column_names:
                raise KeyError(f"score_dataset needs a {column!r} column; the rows have {table.column_names}")
        prompts = table.column("prompt").to_pylist()
        answers = table.column("answer").to_pylist()
        scores = self._score([(_prompt(p), a) for p, a in zip(prompts, answers, strict=True)])
        for name, kind in SCORE_COLUMNS.items():
            values = [getattr(score, name) for score in scores]
            if kind == "json":
                values = [None if v is None else json.dumps(v.model_dump(mode="json")) for v in values]
            table = _set_column(table, name, values, _arrow_type(kind))
        return table


def _set_column(table: Any, name: str, values: list[Any], kind: Any) -> Any:
    import pyarrow as pa  # type: ignore[import-untyped, unused-ignore]

    array = pa.array(values, type=kind)
    if name in table.column_names:
        return table.set_column(table.column_names.index(name), name, array)
    return table.append_column(name, array)


def _map(
    ds: Dataset,
    model: str | Path | None,
    *,
    num_gpus: float,
    num_cpus: float,
    actors: int,
    batch_size: int,
    scorer_options: Mapping[str, Any] | None,
    preserve_order: bool,
    json_pairs: bool,
) -> Dataset:
    import ray.data  # type: ignore[import-not-found, unused-ignore]

    if actors < 1 or batch_size < 1:
        raise ValueError("actors and batch_size must be at least 1")
    options = dict(scorer_options or {})
    if options.get("device", "auto") == "auto":  # an actor's device follows the GPUs it is given
        options["device"] = "cuda" if num_gpus > 0 else "cpu"
    threads = None if num_gpus > 0 else max(1, int(num_cpus))
    scored = ds.map_batches(
        _ScoreBatch,
        fn_constructor_kwargs={
            "model": None if model is None else str(model),
            "options": options,
            "threads": threads,
            "json_pairs": json_pairs,
        },
        batch_size=batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=num_cpus,
        num_gpus=num_gpus if num_gpus > 0 else None,
        udf_modifying_row_count=False,
    )
    if preserve_order:
        # Ray Data emits blocks as they finish; this keeps the input order. The context is the one Ray
        # shares along this chain of datasets (the input's too), and ordering changes no values.
        scored.context.execution_options.preserve_order = True
    return scored


def score_dataset(
    ds: Dataset,
    model: str | Path | None = None,
    *,
    num_gpus: float = 0,
    actors: int = 1,
    batch_size: int = 32,
    num_cpus: float = 1,
    scorer_options: Mapping[str, Any] | None = None,
    preserve_order: bool = True,
) -> Dataset:
    """Score every row of ``ds`` (columns ``prompt`` and ``answer``) on a pool of ``actors`` model actors.

    Args:
        ds: rows with a ``prompt`` (a string, or a list of ``{role, content}`` messages) and an ``answer``;
            an ``id`` and any other columns are kept as they are.
        model: a Hugging Face id, a folder or a .gguf file every actor can read (``None``: the embedded
            model).
        num_gpus: GPUs per actor (0: CPU). With GPUs each actor scores on its own device.
        actors: how many actors, each with one copy of the model, built once.
        batch_size: rows per call of an actor; each call runs them in passes of the scorer's
            ``batch_size`` (``scorer_options``).
        num_cpus: CPUs reserved per actor; on CPU it is also the actor's torch thread count.
        scorer_options: keyword arguments for :class:`~semgrad_guard.SemGradScorer` (``dtype``,
            ``batch_size``, ``calibration``, ``profile``...; ``device`` absent or ``"auto"``: cuda with GPUs,
            else cpu).
        preserve_order: keep the input's row order (Ray Data otherwise emits blocks as they finish).

    Returns:
        A lazy dataset: the input rows, each with the columns of :data:`SCORE_COLUMNS` added (``profile``
        as JSON text; :func:`score_from_row` reads a row back as a Score). Rows that cannot be scored have
        ``valid=False`` and ``invalid_reason``; none is dropped.
    """
    return _map(
        ds,
        model,
        num_gpus=num_gpus,
        num_cpus=num_cpus,
        actors=actors,
        batch_size=batch_size,
        scorer_options=scorer_options,
        preserve_order=preserve_order,
        json_pairs=False,
    )


def score_pairs(
    pairs: Iterable[tuple[Prompt, str]],
    model: str | Path | None = None,
    *,
    num_gpus: float = 0,
    actors: int = 1,
    batch_size: int = 32,
    num_cpus: float = 1,
    scorer_options: Mapping[str, Any] | None = None,
) -> list[Score]:
    """Score in-memory pairs on Ray actors; one Score per pair, in order (what ``score --ray`` runs).

    Unlike :func:`score_dataset`, prompts of different shapes (strings and message lists) may be mixed:
    each pair travels as JSON text.
    """
    import ray.data  # type: ignore[import-not-found, unused-ignore]

    items = [{"pair": json.dumps(list(pair))} for pair in _pairs(pairs)]
    if not items:
        return []
    scored = _map(
        ray.data.from_items(items),
        model,
        num_gpus=num_gpus,
        num_cpus=num_cpus,
        actors=actors,
        batch_size=batch_size,
        scorer_options=scorer_options,
        preserve_order=True,
        json_pairs=True,
    )
    return [Score.model_validate_json(row["score"]) for row in scored.iter_rows()]


def _pairs(pairs: Iterable[tuple[Prompt, str]]) -> Iterable[Sequence[Any]]:
    for pair in pairs:
        if isinstance(pair, (str, bytes)) or not isinstance(pair, Sequence) or len(pair) != 2:
            raise TypeError(f"a pair must be (prompt, answer), got {type(pair).__name__}")
        prompt = pair[0]
        if isinstance(prompt, Sequence) and not isinstance(prompt, str):
            prompt = [dict(message) if isinstance(message, Mapping) else message for message in prompt]
        yield (prompt, pair[1])
