"""`voxtral-pipeline bench`: the regression check (pure JSON), bad input, and one short run end to end."""

import copy
import json

import pytest

from tests.voxtral_fixtures import tiny_bundle_fixture  # noqa: F401  (the tiny_bundle fixture)
from voxtral_pipeline.bench import BenchError, compare, default_input, flatten_figures, load_result
from voxtral_pipeline.cli import main
from voxtral_pipeline.testing.speech import conversation, needs_espeak, write_wav


def _result(**figures: float) -> dict:
    base = {
        "chunker.voice_to_voice_ms.p50": 600.0,
        "chunker.voice_to_voice_ms.p95": 900.0,
        "chunker.overhead_ms.p50": 4.0,
        "chunker.kokoro_ttfb_ms.p50": 300.0,
    }
    base.update(figures)
    return {
        "benchmark": "conversation_bench",
        "voxtral_model": "dummy:tiny",
        "tts_model": "dummy:tiny",
        "reply_tokens": 24,
        "machine": {"cpu": "AMD EPYC", "gpu": None},
        "figures": base,
    }


def test_compare_flags_figures_worse_by_more_than_both_tolerances():
    baseline = _result()
    current = _result(
        **{
            "chunker.voice_to_voice_ms.p50": 700.0,  # +100 ms, +17%: worse
            "chunker.voice_to_voice_ms.p95": 1000.0,  # +100 ms but +11%: within 15%
            "chunker.overhead_ms.p50": 9.0,  # +125% but +5 ms: within the 20 ms floor
            "chunker.kokoro_ttfb_ms.p50": 200.0,  # better
        }
    )
    worse, notes = compare(baseline, current, tolerance=0.15, tolerance_ms=20.0)
    assert [(r.figure, r.baseline, r.current) for r in worse] == [
        ("chunker.voice_to_voice_ms.p50", 600.0, 700.0)
    ]
    assert notes == []
    assert (
        compare(baseline, current, tolerance=0.05, tolerance_ms=2.0)[0][-1].figure
        == "chunker.voice_to_voice_ms.p95"
    )
    assert {r.figure for r in compare(baseline, current, tolerance=0.5, tolerance_ms=1.0)[0]} == {
        "chunker.overhead_ms.p50"
    }
    assert compare(baseline, baseline)[0] == []


def test_compare_notes_missing_figures_and_other_models_or_machines():
    baseline = _result()
    current = _result()
    del current["figures"]["chunker.overhead_ms.p50"]
    current["tts_model"] = "dummy:full"
    current["machine"] = {"cpu": "Intel Xeon", "gpu": "NVIDIA H100"}
    worse, notes = compare(baseline, current)
    assert worse == []
    assert "only in the baseline: chunker.overhead_ms.p50" in notes
    assert any(n.startswith("tts_model differs") for n in notes)
    assert any(n.startswith("different machine") for n in notes)
    with pytest.raises(BenchError):
        compare(baseline, current, tolerance=-0.1)


def test_flatten_figures_reads_every_percentile_of_both_runs():
    summary = {"turns": 2, "voice_to_voice_ms": {"p50": 610.0, "p90": 700.0, "p95": 720.0}}
    summary["overhead_ms"] = {"p50": 3.0, "p90": None, "p95": None}
    result = {"runs": {"chunker": {"summary": summary}, "stock": {"summary": copy.deepcopy(summary)}}}
    figures = flatten_figures(result)
    assert (
        figures["chunker.voice_to_voice_ms.p50"] == 610.0
        and figures["chunker.voice_to_voice_ms.p95"] == 720.0
    )
    assert figures["chunker.overhead_ms.p50"] == 3.0 and "chunker.overhead_ms.p95" not in figures
    assert figures["stock.voice_to_voice_ms.p95"] == 720.0 and "stock.overhead_ms.p50" not in figures


def _write(path, data) -> str:
    path.write_text(json.dumps(data))
    return str(path)


def test_compare_command_exit_codes(tmp_path, capsys):
    base = _write(tmp_path / "base.json", _result())
    same = _write(tmp_path / "same.json", _result(**{"chunker.voice_to_voice_ms.p50": 610.0}))
    slow = _write(tmp_path / "slow.json", _result(**{"chunker.voice_to_voice_ms.p50": 800.0}))
    assert main(["bench", "--compare", base, "--current", same]) == 0
    assert "no figure got worse" in capsys.readouterr().out
    assert main(["bench", "--compare", base, "--current", slow]) == 1
    out = capsys.readouterr().out
    assert (
        "1 figure(s) got worse" in out and "chunker.voice_to_voice_ms.p50" in out and "600.0 -> 800.0" in out
    )
    assert main(["bench", "--compare", base, "--current", slow, "--tolerance", "0.5"]) == 0


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such result file"),
        ("{not json", "unreadable JSON"),
        ('{"figures": {}}', "no 'figures'"),
        ('{"figures": {"chunker.ttft_ms.p50": "fast"}}', "is not a number"),
    ],
)
def test_bad_baseline_is_a_one_line_error(tmp_path, capsys, content, message):
    path = tmp_path / "baseline.json"
    if content is not None:
        path.write_text(content)
    current = _write(tmp_path / "current.json", _result())
    assert main(["bench", "--compare", str(path), "--current", current]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    with pytest.raises(BenchError):
        load_result(path)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--input", "/nonexistent/talk.wav"], "input file not found"),
        (["--voxtral-model", "dummy:huge"], "dummy"),
        (["--reply-tokens", "-1"], "--reply-tokens"),
        (["--repeats", "0"], "--repeats"),
        (["--tolerance", "-1"], "must not be negative"),
        (["--current", "x.json"], "--current needs --compare"),
        (["--set", "metrics.nope=1"], "nope"),
    ],
)
def test_bad_bench_input_fails_before_any_model_loads(capsys, args, message):
    assert main(["bench", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_default_conversation_is_packaged():
    from voxtral_pipeline.transports.file import read_input_audio

    audio = read_input_audio(default_input())
    assert 40 < audio.duration_secs < 70


@needs_espeak
def test_bench_end_to_end_on_one_short_question(tmp_path, capsys):
    wav = write_wav(tmp_path / "one.wav", conversation(["What is the capital of France?"]))
    out = tmp_path / "results"
    args = ["bench", "--input", str(wav), "--out", str(out), "--name", "short", "--reply-tokens", "6"]
    args += ["--set", "transport.file.idle_secs=0.5", "--set", "transport.file.tail_secs=0.5"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "voice_to_voice_ms" in printed and "pipeline overhead" in printed and "stock/chunker" in printed
    result = json.loads((out / "short.json").read_text())
    assert (out / "short.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result["machine"]["cpu_cores"] and "torch" in result["machine"]
    for run in ("chunker", "stock"):
        (turn,) = result["runs"][run]["turns"]
        assert turn["completion_tokens"] == 6
        marks = [
            turn[k]
            for k in ("vad_stop_ms", "end_of_turn_ms", "ttft_ms", "first_audio_ms", "voice_to_voice_ms")
        ]
        assert None not in marks and marks == sorted(marks)
    assert set(result["gain"]) == {"first_chunk_ms", "first_audio_ms", "voice_to_voice_ms"}
    assert (
        result["figures"]["chunker.voice_to_voice_ms.p50"]
        == result["runs"]["chunker"]["turns"][0]["voice_to_voice_ms"]
    )
    # The same result against itself: nothing got worse.
    assert main(["bench", "--compare", str(out / "short.json"), "--current", str(out / "short.json")]) == 0


def test_repeats_pool_every_turn_into_one_summary():
    from voxtral_pipeline.bench import pool

    def report(v2v: list[float]) -> dict:
        turns = [{"index": i, "voice_to_voice_ms": v, "overhead_ms": 4.0} for i, v in enumerate(v2v)]
        return {"turns": turns, "summary": {}, "wall_s": 10.0, "bot_audio_s": 2.0}

    pooled = pool([report([100.0, 200.0]), report([300.0, 400.0])])
    assert [(t["repeat"], t["index"]) for t in pooled["turns"]] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert pooled["summary"]["turns"] == 4
    assert pooled["summary"]["voice_to_voice_ms"]["p50"] == 250.0
    assert pooled["summary"]["first_audio_ms"] == {"p50": None, "p90": None, "p95": None}
    assert pooled["repeat_wall_s"] == [10.0, 10.0] and pooled["bot_audio_s"] == 4.0


def test_silent_conversation_is_a_clear_error_and_writes_nothing(tmp_path, capsys):
    import numpy as np

    wav = write_wav(tmp_path / "silence.wav", np.zeros(16000, np.float32))
    out = tmp_path / "results"
    args = ["bench", "--input", str(wav), "--out", str(out), "--set", "transport.file.idle_secs=0.2"]
    assert main([*args, "--set", "transport.file.tail_secs=0.2"]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after the model loader's progress bar
    assert last.startswith("voxtral-pipeline bench: error: no speech was heard")
    assert not out.exists()


@needs_espeak
def test_bench_on_vllm_asks_for_the_reply_tokens(tmp_path, capsys, tiny_bundle):
    """``--reply-tokens`` fixes every answer's length on vLLM too (``min_tokens`` with
    ``max_tokens``), so its numbers compare with the in-process engine's."""
    import asyncio
    import threading

    from tests.vllm_protocol_server import VLLMProtocolServer

    # The stand-in serves from its own thread: the bench runs in the main one (its signal handlers).
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server = VLLMProtocolServer(tiny_bundle.tokenizer)
    asyncio.run_coroutine_threadsafe(server.__aenter__(), loop).result(30)
    wav = write_wav(tmp_path / "one.wav", conversation(["What is the capital of France?"]))
    out = tmp_path / "results"
    reply = len(server.reply_words) + 3  # past where the stand-in's answer would end
    args = ["bench", "--vllm", server.base_url, "--input", str(wav), "--out", str(out), "--name", "v"]
    args += ["--reply-tokens", str(reply), "--no-stock", "--no-chart"]
    args += ["--set", "transport.file.idle_secs=0.5", "--set", "transport.file.tail_secs=0.5"]
    try:
        assert main(args) == 0
    finally:
        asyncio.run_coroutine_threadsafe(server.__aexit__(None, None, None), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        loop.close()
    assert server.requests and all(
        (r.body["max_tokens"], r.body.get("min_tokens")) == (reply, reply) for r in server.requests
    )
    result = json.loads((out / "v.json").read_text())
    assert result["voxtral_backend"] == "vllm"
    assert [t["completion_tokens"] for t in result["runs"]["chunker"]["turns"]] == [reply]
