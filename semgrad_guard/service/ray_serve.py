"""The scorer service as a Ray Serve deployment: replicas of one model each, behind Ray Serve's proxy.

Needs ``pip install "ray[serve]>=2.60,<3"`` (not part of any extra: Ray Serve brings many dependencies).
Each replica builds its :class:`~semgrad_guard.SemGradScorer` once and serves the same FastAPI app as
:func:`~semgrad_guard.service.app.create_app`, so :class:`~semgrad_guard.service.remote.RemoteScorer` and
every endpoint, limit and error code work unchanged.

Example:
    >>> from ray import serve  # doctest: +SKIP
    >>> from semgrad_guard.service.ray_serve import deployment  # doctest: +SKIP
    >>> app = deployment("HuggingFaceTB/SmolLM2-135M-Instruct", num_replicas=2, num_gpus=1)  # doctest: +SKIP
    >>> serve.run(app, route_prefix="/")  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["deployment"]


class _Replica:
    """One replica: a scorer, built once, and the app that serves it (built by Ray Serve after init)."""

    def __init__(
        self, model: str | None, scorer_options: Mapping[str, Any], app_options: Mapping[str, Any]
    ) -> None:
        from semgrad_guard.scorer import SemGradScorer

        self.scorer = SemGradScorer(model, **dict(scorer_options))
        self.app_options = dict(app_options)

    def __serve_build_asgi_app__(self) -> Any:
        from semgrad_guard.service.app import create_app

        return create_app(self.scorer, **self.app_options)


def deployment(
    model: str | Path | None = None,
    *,
    num_replicas: int = 1,
    num_gpus: float = 0,
    num_cpus: float = 1,
    max_ongoing_requests: int = 64,
    token: str | None = None,
    scorer_options: Mapping[str, Any] | None = None,
    app_options: Mapping[str, Any] | None = None,
) -> Any:
    """A bound Ray Serve application serving ``model`` on ``num_replicas`` replicas.

    Args:
        model: a Hugging Face id, folder or .gguf file every replica can read (``None``: the embedded
            model, with its shipped calibration).
        num_replicas: replicas, each with its own copy of the model.
        num_gpus: GPUs per replica (0: CPU); the scorer's device defaults to cuda with GPUs, else cpu.
        num_cpus: CPUs reserved per replica.
        max_ongoing_requests: requests Ray Serve sends one replica at once; a replica gathers them into
            shared passes, so this should be a few times the scorer's ``batch_size``.
        token: the bearer token ``/v1/*`` requests must carry.
        scorer_options: keyword arguments for :class:`~semgrad_guard.SemGradScorer`.
        app_options: keyword arguments for :func:`~semgrad_guard.service.app.create_app` (``max_pairs``,
            ``timeout_s``...).

    Returns:
        The application for ``serve.run(app, route_prefix="/")``.
    """
    from ray import serve  # type: ignore[import-not-found, unused-ignore]

    options: dict[str, Any] = {"device": "cuda" if num_gpus > 0 else "cpu"}
    if model is None:
        options["calibration"] = "default"
    options.update(scorer_options or {})
    ingress = serve.ingress()(_Replica)
    replica: Any = serve.deployment(
        ingress,
        name="semgrad-guard",
        num_replicas=num_replicas,
        max_ongoing_requests=max_ongoing_requests,
        ray_actor_options={"num_gpus": num_gpus, "num_cpus": num_cpus},
    )
    return replica.bind(
        None if model is None else str(model), options, {"token": token, **(app_options or {})}
    )
