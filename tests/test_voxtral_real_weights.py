"""What the real Voxtral weights need that the dummies never exercised, checked on CPU.

Dtype and attention are pure functions of the device's properties (a GPU is only described); a
partly cached hub snapshot is made in a private HF cache; streamed text is fed a tokenizer whose
tokens straddle character boundaries, as byte-level BPE tokens do.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import tomllib
import torch

import voxtral_pipeline.models.voxtral as vx
from voxtral_pipeline.models import ModelUnavailableError
from voxtral_pipeline.models.voxtral import (
    DeviceProperties,
    TokenStreamer,
    choose_attn_implementation,
    choose_dtype,
)

REPO = Path(__file__).resolve().parents[1]
CPU = DeviceProperties("cpu")
T4 = DeviceProperties("cuda", (7, 5))
V100 = DeviceProperties("cuda", (7, 0))
A100 = DeviceProperties("cuda", (8, 0))
H100 = DeviceProperties("cuda", (9, 0))


# --- dtype and attention ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("props", "expected"),
    [
        (CPU, torch.float32),
        (T4, torch.float16),
        (V100, torch.float16),
        (A100, torch.bfloat16),
        (H100, torch.bfloat16),
    ],
)
def test_auto_dtype_is_bf16_only_where_native(props, expected):
    assert choose_dtype("auto", props) == expected


def test_explicit_dtype_is_kept_and_a_bad_one_named():
    assert choose_dtype("bfloat16", T4) == torch.bfloat16
    assert choose_dtype("float32", H100) == torch.float32
    with pytest.raises(ValueError, match="int8"):
        choose_dtype("int8", CPU)


@pytest.mark.parametrize(
    ("props", "dtype", "usable", "expected"),
    [
        (H100, torch.bfloat16, True, "flash_attention_2"),
        (A100, torch.float16, True, "flash_attention_2"),
        (H100, torch.float32, True, "sdpa"),  # flash-attn has no fp32 kernels
        (T4, torch.float16, True, "sdpa"),  # pre-Ampere
        (V100, torch.float16, True, "sdpa"),
        (H100, torch.bfloat16, False, "sdpa"),  # not installed, or broken
        (CPU, torch.float32, True, "sdpa"),
        (CPU, torch.bfloat16, True, "sdpa"),
    ],
)
def test_auto_attention_picks_flash_only_where_it_runs(props, dtype, usable, expected):
    assert choose_attn_implementation("auto", props, dtype, usable) == expected


def test_explicit_attention_is_kept():
    assert choose_attn_implementation("eager", H100, torch.bfloat16, True) == "eager"
    assert choose_attn_implementation("flash_attention_2", CPU, torch.float32, False) == "flash_attention_2"


def test_auto_on_the_cpu_never_imports_flash_attn(monkeypatch):
    monkeypatch.setattr(vx, "flash_attn_importable", lambda: pytest.fail("imported on CPU"))
    assert vx.resolve_attn_implementation("auto", "cpu", torch.float32) == "sdpa"
    assert vx.resolve_dtype("auto", "cpu") == torch.float32


@pytest.mark.parametrize(
    "body",
    ["raise ImportError('undefined symbol: _ZN3c10')", "raise OSError('libcudart.so.12: cannot open')"],
)
def test_a_broken_flash_attn_wheel_falls_back_to_sdpa(tmp_path, monkeypatch, body):
    (tmp_path / "flash_attn").mkdir()
    (tmp_path / "flash_attn" / "__init__.py").write_text(body + "\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "flash_attn", raising=False)
    assert vx.flash_attn_importable() is False
    monkeypatch.setattr(DeviceProperties, "of", classmethod(lambda cls, device: H100))
    assert vx.resolve_attn_implementation("auto", "cuda:0", torch.bfloat16) == "sdpa"


def test_a_working_flash_attn_is_chosen_on_ampere(tmp_path, monkeypatch):
    (tmp_path / "flash_attn").mkdir()
    (tmp_path / "flash_attn" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "flash_attn", raising=False)
    monkeypatch.setattr(DeviceProperties, "of", classmethod(lambda cls, device: A100))
    assert vx.resolve_attn_implementation("auto", "cuda:0", torch.bfloat16) == "flash_attention_2"
    assert vx.resolve_attn_implementation("auto", "cuda:0", torch.float32) == "sdpa"
    monkeypatch.setattr(DeviceProperties, "of", classmethod(lambda cls, device: T4))
    assert vx.resolve_dtype("auto", "cuda:0") == torch.float16


# --- a partly cached hub snapshot ----------------------------------------------------------------


def _snapshot(cache: Path, files: dict[str, Path]) -> None:
    """A HF cache entry for the real model id holding ``files`` (name -> source)."""
    repo = cache / "models--mistralai--Voxtral-Mini-3B-2507"
    snapshot = repo / "snapshots" / "0123456789abcdef"
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123456789abcdef")
    for name, source in files.items():
        shutil.copy(source, snapshot / name)


def test_partly_cached_snapshot_offline_is_one_sentence(tmp_path):
    """An interrupted download (config there, tekken.json not): no traceback, the files named."""
    tiny = vx.build_dummy_tiny(tmp_path / "tiny")
    cache = tmp_path / "hf"
    keep = ("config.json", "generation_config.json", "processor_config.json", "model.safetensors")
    _snapshot(cache, {name: tiny / name for name in keep})
    script = textwrap.dedent(
        """
        from voxtral_pipeline.models import ModelUnavailableError
        from voxtral_pipeline.models.voxtral import load_voxtral
        try:
            load_voxtral("mistralai/Voxtral-Mini-3B-2507", device="cpu")
        except ModelUnavailableError as e:
            print("MESSAGE:" + str(e))
        """
    )
    env = dict(os.environ, HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    message = proc.stdout.split("MESSAGE:", 1)[1].strip()
    assert "\n" not in message
    assert "only partly" in message and "tekken.json missing" in message
    assert "--include '*.json' --include 'model*.safetensors'" in message


def test_partly_cached_snapshot_resumes_the_download_when_the_hub_answers(monkeypatch):
    calls: list[bool] = []

    def from_pretrained(source, device, dtype, attn="sdpa", **kwargs):
        calls.append(kwargs.get("local_files_only", False))
        if kwargs.get("local_files_only"):  # what the tokenizer raises for the missing tekken.json
            raise ValueError("No valid tokenizer file found in the repo mistralai/Voxtral-Mini-3B-2507.")
        return "processor", "model"

    monkeypatch.setattr(vx, "_from_pretrained", from_pretrained)
    monkeypatch.setattr(vx, "_missing_cached_files", lambda model_id: ["tekken.json"])
    monkeypatch.setattr(vx, "hub_reachable", lambda: True)
    assert vx._load_hub("mistralai/Voxtral-Mini-3B-2507", "cpu", torch.float32) == ("processor", "model")
    assert calls == [True, False]  # the cache, then the hub (which fetches only what is missing)

    def failing(source, device, dtype, attn="sdpa", **kwargs):
        raise ValueError("No valid tokenizer file found in the repo mistralai/Voxtral-Mini-3B-2507.")

    monkeypatch.setattr(vx, "_from_pretrained", failing)
    with pytest.raises(ModelUnavailableError, match="cannot download Voxtral model"):
        vx._load_hub("mistralai/Voxtral-Mini-3B-2507", "cpu", torch.float32)


def test_offline_hint_downloads_only_what_transformers_loads(monkeypatch):
    monkeypatch.setattr(vx, "_from_pretrained", lambda *a, **k: (_ for _ in ()).throw(OSError("not cached")))
    monkeypatch.setattr(vx, "_missing_cached_files", lambda model_id: list(vx._REQUIRED_HUB_FILES))
    monkeypatch.setattr(vx, "hub_reachable", lambda: False)
    with pytest.raises(ModelUnavailableError) as e:
        vx._load_hub("mistralai/Voxtral-Mini-3B-2507", "cpu", torch.float32)
    command = re.search(r"`(hf download [^`]*)`", str(e.value)).group(1)
    patterns = re.findall(r"--include '([^']+)'", command)
    from fnmatch import fnmatch

    wanted = ["config.json", "tekken.json", "preprocessor_config.json", "generation_config.json",
              "model.safetensors.index.json", "model-00001-of-00002.safetensors"]  # fmt: skip
    assert all(any(fnmatch(name, p) for p in patterns) for name in wanted)
    assert not any(fnmatch("consolidated.safetensors", p) for p in patterns)  # vLLM's copy: 9 GB


# --- streamed text ------------------------------------------------------------------------------


class _BytesTokenizer:
    """Ids are byte strings that may end one character and begin the next (as BPE tokens do)."""

    _voxtral_tool_call_ids: dict[int, str] = {}  # no function-call markers among these ids

    def __init__(self, pieces: list[bytes]):
        self.pieces = pieces

    def decode(self, ids, skip_special_tokens=True) -> str:
        return b"".join(self.pieces[i] for i in ids).decode("utf-8", errors="replace")


def _stream(pieces: list[bytes]) -> list[str]:
    deltas: list[str] = []
    streamer = TokenStreamer(_BytesTokenizer(pieces), lambda d, n: deltas.append(d))
    streamer.put(torch.tensor([[0]]))  # the prompt: skipped
    for i in range(len(pieces)):
        streamer.put(torch.tensor([i]))
    streamer.end()
    return deltas


def test_streamed_text_has_no_replacement_char_when_characters_straddle_many_tokens():
    text = "a中文字テスト"
    raw = text.encode()
    # Every token but the last ends inside a character: a run of 8 tokens never decodes whole.
    cuts = [2, 3, 5, 6, 8, 9, 11, 13, 15, len(raw)]
    pieces, start = [], 0
    for cut in cuts:
        pieces.append(raw[start:cut])
        start = cut
    deltas = _stream(pieces)
    assert "".join(deltas) == text
    assert not any("\ufffd" in d for d in deltas), deltas
    assert deltas[0] == "a"  # whole characters go out at once, not at the end of the run
    assert len(deltas) == len(pieces)


def test_undecodable_bytes_still_come_out():
    deltas = _stream([b"ok", b"\xff", b"x", b"\xe4"])
    assert "".join(deltas) == "ok\ufffdx\ufffd"


# --- packaging and docs --------------------------------------------------------------------------


def test_torch_lower_bound_is_what_transformers_accepts():
    from transformers.dependency_versions_table import deps

    ours = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    torch_req = next(d for d in ours if re.match(r"torch\b", d) and not d.startswith("torchaudio"))
    assert deps["torch"].replace(" ", "") in torch_req.replace(" ", ""), (torch_req, deps["torch"])


def test_deployment_doc_counts_static_cache_memory():
    config = vx.dummy_voxtral_config("full").text_config
    per_token = vx.kv_bytes_per_token(config, torch.bfloat16)
    assert per_token == 2 * 30 * 8 * 128 * 2  # K and V, 30 layers, 8 KV heads of 128, bf16
    gib = per_token * 16384 / 2**30
    doc = (REPO / "docs" / "deployment.md").read_text()
    assert f"{per_token // 1024} KiB" in doc and f"{gib:.2f} GiB" in doc
    assert "kv_cache_max_tokens" in doc and "static_cache" in doc
