"""The GPU suite's CPU dry run: every section runs end to end with tiny models and writes its JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_gpu_suite_dry_run_on_cpu(tmp_path):
    out = tmp_path / "suite.json"
    env = dict(
        os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO), VOXTRAL_PIPELINE_CACHE=str(tmp_path / "cache")
    )
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_suite.py"), "--tiny", "--out", str(out)],
        capture_output=True, text=True, timeout=900, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(out.read_text())
    assert result["mode"] == "tiny" and result["device"]["torch"]
    sections = result["sections"]
    assert set(sections) == {
        "voxtral_turns",
        "prefill_375",
        "concurrency",
        "kokoro_first_audio",
        "voice_to_voice",
    }
    for name, entry in sections.items():
        assert "error" not in entry and "skipped" not in entry, (name, entry)

    turns = sections["voxtral_turns"]
    for mode in ("dynamic_cache", "static_cache_compile"):
        rows = turns[mode]["turns"]
        assert len(rows) == 3 and all(r["ttft_model_ms"] > 0 for r in rows)
        assert rows[-1]["prefill_tokens"] < rows[-1]["prompt_tokens"]  # the KV cache was reused
    assert sections["prefill_375"]["ttft_ms_median"] > 0
    assert set(sections["concurrency"]) >= {"1", "2"}
    assert sections["concurrency"]["2"]["tokens"] == 2 * 8
    assert set(sections["kokoro_first_audio"]) >= {"1_words", "16_words"}
    assert (
        sections["kokoro_first_audio"]["16_words"]["audio_s"]
        > sections["kokoro_first_audio"]["1_words"]["audio_s"]
    )
    assert sections["voice_to_voice"]["turns"] > 0
