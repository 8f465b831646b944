"""Offline scoring on Ray Data: a local two-CPU cluster gives the scores of one process, rows in order."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ray = pytest.importorskip("ray", reason="Ray is optional: pip install 'semgrad-guard[ray]'")
pytest.importorskip("ray.data", reason="Ray Data is optional: pip install 'semgrad-guard[ray]'")

from semgrad_guard import Score, SemGradScorer  # noqa: E402
from semgrad_guard.ray import SCORE_COLUMNS, score_dataset, score_from_row, score_pairs  # noqa: E402

pytestmark = [
    pytest.mark.allow_hosts(["127.0.0.1"]),  # the driver talks to its local cluster
    pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.*"),
]

ROWS = [
    {"id": 10 + i, "prompt": f"What is {i} plus {i}?", "answer": f"{2 * i}, since {i} and {i} make {2 * i}."}
    for i in range(10)
]
ROWS[3]["answer"] = "  "  # empty: marked, not dropped
NUMBERS = ("semgrad", "hybridgrad", "param_grad", "exgrad", "mean_entropy", "nll", "ln_nll", "max_token_nll")


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    """A local Ray cluster of two CPUs for this module."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def reference(tiny_dir: Path) -> list[Score]:
    """The same rows scored in this process, one batch."""
    scorer = SemGradScorer(tiny_dir, device="cpu")
    return scorer.score_batch([(row["prompt"], row["answer"]) for row in ROWS], errors="mark")


def assert_close(got: list[Score], want: list[Score]) -> None:
    """Equal up to float32 rounding: batches of other shapes sum in another order."""
    assert [s.valid for s in got] == [s.valid for s in want]
    assert [s.invalid_reason for s in got] == [s.invalid_reason for s in want]
    for g, w in zip(got, want, strict=True):
        assert (g.n_answer_tokens, g.n_prompt_tokens, g.position, g.profile) == (
            w.n_answer_tokens,
            w.n_prompt_tokens,
            w.position,
            w.profile,
        )
        for field in NUMBERS:
            a, b = getattr(g, field), getattr(w, field)
            assert (a is None) == (b is None)
            if a is not None:
                assert math.isclose(a, b, rel_tol=1e-3, abs_tol=1e-9), (field, a, b)


def test_two_actors_give_the_single_process_scores_in_order(
    cluster: None, tiny_dir: Path, reference: list[Score]
) -> None:
    ds = ray.data.from_items(ROWS, override_num_blocks=5)
    scored = score_dataset(ds, model=tiny_dir, actors=2, batch_size=2, scorer_options={"batch_size": 2})
    rows: list[dict[str, Any]] = scored.take_all()
    assert [row["id"] for row in rows] == [row["id"] for row in ROWS]
    assert [row["prompt"] for row in rows] == [row["prompt"] for row in ROWS]  # input columns kept
    assert set(SCORE_COLUMNS) <= set(rows[0])
    assert not rows[3]["valid"] and rows[3]["invalid_reason"].startswith("empty_answer")
    assert_close([score_from_row(row) for row in rows], reference)


def test_score_pairs_takes_mixed_prompts(cluster: None, tiny_dir: Path) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 plus 2?"}]
    pairs: list[tuple[Any, str]] = [("What is 2 plus 2?", "4"), (messages, "4"), ("Say it.", "")]
    got = score_pairs(pairs, model=tiny_dir, actors=1, batch_size=2)
    assert_close(got, SemGradScorer(tiny_dir, device="cpu").score_batch(pairs, errors="mark"))
    assert score_pairs([], model=tiny_dir) == []


def test_serve_deployment_answers_like_the_service(
    cluster: None, tiny_dir: Path, reference: list[Score]
) -> None:
    """Only where Ray Serve is installed (not part of any extra): the same app behind Ray Serve's proxy."""
    serve = pytest.importorskip("ray.serve", reason="Ray Serve is not installed: pip install 'ray[serve]'")
    pytest.importorskip("fastapi", reason="the service needs the serve extra")
    import socket

    from semgrad_guard.service import RemoteScorer, UnauthorizedError
    from semgrad_guard.service.ray_serve import deployment

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(deployment(tiny_dir, token="t", app_options={"max_pairs": 4}), route_prefix="/")
        with RemoteScorer(f"http://127.0.0.1:{port}", token="t", timeout=60) as remote:
            pairs = [(row["prompt"], row["answer"]) for row in ROWS]
            assert_close(remote.score_batch(pairs, errors="mark"), reference)
        with RemoteScorer(f"http://127.0.0.1:{port}") as anonymous, pytest.raises(UnauthorizedError):
            anonymous.score("q", "a")
    finally:
        serve.shutdown()
