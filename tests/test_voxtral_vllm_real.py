"""The Voxtral stage and the whole pipeline against a real vLLM server (PyPI's CPU build).

The server (``voxtral_pipeline.testing.vllm_server``) serves a random-weight Voxtral exported in
vLLM's Mistral format; its test-only logits processor keeps the output visible and plays scripts
(a forced reply, a tool call, a slow answer). One server for the whole module: it takes ~20 s
(minutes on a busy machine) to start. Everything is configured the way a user would:
``voxtral.backend = "vllm"``, ``voxtral.vllm.base_url``, ``voxtral.vllm.model``.

What the real server cannot do on demand (HTTP 500s, a hang before the first token, a stream cut
after two chunks, checking every request body) stays in tests/test_voxtral_vllm.py, against the
stand-in tests/vllm_protocol_server.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import pytest
from aiohttp import ClientSession, web
from pipecat.adapters.llm.schemas.function_schema import FunctionSchema
from pipecat.frames.frames import ErrorFrame, LLMFullResponseEndFrame, LLMTextFrame

from tests.voxtral_fixtures import StageHarness, count, make_utterance, wait_until
from voxtral_pipeline.config import load_config
from voxtral_pipeline.testing.speech import conversation, needs_espeak, write_wav
from voxtral_pipeline.testing.vllm_server import VLLMServer, VLLMUnavailableError, vllm_python

pytestmark = pytest.mark.skipif(
    vllm_python() is None,
    reason="vLLM is not installed in .venv-vllm (`make vllm-setup`; `make test` builds it)",
)


@pytest.fixture(scope="module")
def vllm():
    server = VLLMServer()
    try:
        server.start()
    except VLLMUnavailableError as e:
        server.close()
        pytest.fail(str(e))  # installed but broken: a failure, not a skip
    yield server
    server.close()


@pytest.fixture(autouse=True)
def _no_script(vllm):
    """Each test starts with the plain visible-text model, on a running server."""
    vllm.script()
    if not vllm.healthy():  # a test that killed it and failed before restarting it
        vllm.stop()
        vllm.start()
    yield
    vllm.script()


def _config(base_url: str, model: str, **voxtral):
    overrides = {
        "voxtral.backend": "vllm",
        "voxtral.vllm.base_url": base_url,
        "voxtral.vllm.model": model,
        "voxtral.max_new_tokens": 24,
        "voxtral.transcribe_history": False,
        **{f"voxtral.{k}": v for k, v in voxtral.items()},
    }
    return load_config(None, overrides)


def _stage(config, session_id: str | None = None, tools=None):
    """The Voxtral stage of a pipeline built from ``config`` (the one place that names its class)."""
    from voxtral_pipeline.processors.voxtral import VoxtralLLMService

    return VoxtralLLMService(config.voxtral, session_id=session_id, tools=tools)


def _texts(frames) -> str:
    return "".join(f.text for f in frames if isinstance(f, LLMTextFrame))


def _errors(frames) -> list[ErrorFrame]:
    return [f for f in frames if isinstance(f, ErrorFrame)]


# ----------------------------------------------------------------------------------------------
# The whole pipeline


@needs_espeak
def test_spoken_conversation_answered_with_prefix_cache_hits(vllm, tmp_path):
    """The file bot (VAD, Smart Turn, vLLM, chunker, Kokoro) on three spoken questions."""
    wav = write_wav(
        tmp_path / "three.wav",
        conversation(["What time is it?", "And the weather?", "Thank you very much."], gap_secs=4.0),
    )
    report_path = tmp_path / "report.json"
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    proc = subprocess.run(
        [
            sys.executable, "-m", "voxtral_pipeline", "run",
            "--input", str(wav), "--output", str(tmp_path / "reply.wav"), "--report", str(report_path),
            "--tts-model", "dummy:tiny",
            "--set", "voxtral.backend=vllm",
            "--set", f"voxtral.vllm.base_url={vllm.base_url}",
            "--set", f"voxtral.vllm.model={vllm.served_name}",
            "--set", "voxtral.max_new_tokens=12",
        ],
        capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    turns = json.loads(report_path.read_text())["turns"]
    assert len(turns) == 3, turns
    assert all(t["reply_text"] and t["generate_calls"] == 1 for t in turns), turns
    assert turns[0]["prompt_tokens"] > 375  # one 30-s audio chunk is 375 tokens
    for earlier, later in zip(turns, turns[1:], strict=False):
        assert later["prompt_tokens"] > earlier["prompt_tokens"]
        # vLLM's prefix cache served the earlier turns: only the new part was prefilled.
        assert later["prefill_tokens"] < later["prompt_tokens"] - 375, later


@needs_espeak
def test_bench_runs_on_vllm_with_one_flag(vllm, tmp_path, capsys):
    from voxtral_pipeline.cli import main

    vllm.script(min_tokens=6)  # answers of exactly --reply-tokens (the server ends them at max_tokens)
    wav = write_wav(tmp_path / "one.wav", conversation(["What is the capital of France?"]))
    out = tmp_path / "results"
    args = ["bench", "--vllm", vllm.base_url, "--input", str(wav), "--out", str(out), "--name", "v"]
    args += ["--reply-tokens", "6", "--no-stock", "--no-chart"]
    args += ["--set", "transport.file.idle_secs=0.5", "--set", "transport.file.tail_secs=0.5"]
    assert main(args) == 0, capsys.readouterr().err[-2000:]
    result = json.loads((out / "v.json").read_text())
    assert result["voxtral_backend"] == "vllm"
    (turn,) = result["runs"]["chunker"]["turns"]
    assert turn["ttft_ms"] is not None and turn["voice_to_voice_ms"] is not None
    assert turn["prompt_tokens"] > 375


# ----------------------------------------------------------------------------------------------
# The stage


async def test_wrong_model_name_is_a_clear_error_and_the_right_one_answers(vllm):
    bad = _stage(_config(vllm.base_url, "someone/else"))
    async with StageHarness(bad) as h:
        await h.send(make_utterance(1.0, seed=1))
        await h.wait_up(count(ErrorFrame))
        await h.wait_down(count(LLMFullResponseEndFrame))
    (error,) = _errors(h.up)
    assert "HTTP 404" in error.error and "someone/else" in error.error and not error.fatal

    vllm.script(reply="hello there.")
    good = _stage(_config(vllm.base_url, vllm.served_name))
    async with StageHarness(good) as h:
        await h.send(make_utterance(1.0, seed=1))
        await h.wait_down(count(LLMFullResponseEndFrame))
    assert not _errors(h.up)
    assert _texts(h.down) == "hello there."


async def test_tool_call_round_trip(vllm):
    vllm.script(tool_call={"name": "get_time", "arguments": {"tz": "UTC"}}, reply="it is noon.")
    calls = []

    async def get_time(params):
        calls.append(dict(params.arguments))
        await params.result_callback({"time": "12:00"})

    schema = FunctionSchema(
        name="get_time",
        description="The current time in a time zone.",
        properties={"tz": {"type": "string", "description": "IANA time zone"}},
        required=["tz"],
    )
    service = _stage(
        _config(vllm.base_url, vllm.served_name, max_new_tokens=80, **{"tools.filler": False}), tools=[schema]
    )
    service.register_function("get_time", get_time)
    async with StageHarness(service) as h:
        await h.send(make_utterance(1.0, seed=5))
        await h.wait_down(count(LLMFullResponseEndFrame))
    assert not _errors(h.up), _errors(h.up)
    assert calls == [{"tz": "UTC"}]
    assert _texts(h.down) == "it is noon."  # the call itself is never spoken
    roles = [t.role for t in service.history]
    assert roles == ["user", "assistant", "tool", "assistant"], roles
    assert service.history[1].tool_calls[0]["function"]["name"] == "get_time"
    assert json.loads(service.history[2].text) == {"time": "12:00"}


async def test_transcripts_have_a_token_limit(vllm):
    # EOS forbidden: without a limit the transcript would run to the context limit (4096 tokens).
    vllm.script(min_tokens=100_000)
    config = _config(vllm.base_url, vllm.served_name, transcribe_history=True, max_new_tokens=4)
    service = _stage(config)
    async with StageHarness(service) as h:
        await h.send(make_utterance(1.0, seed=7))
        await h.wait_down(count(LLMFullResponseEndFrame))
        user = service.history[0]
        await wait_until(lambda: user.transcript is not None, "idle-time transcript")
    assert not _errors(h.up)
    # One byte-level token per character; 1 s of audio allows 16 + 8 tokens.
    assert 0 < len(user.transcript) <= 24, user.transcript


class _SessionRecorder:
    """A pass-through HTTP proxy in front of vLLM that records each request's session header,
    the way a session-affine router sees them."""

    def __init__(self, upstream: str):
        self.upstream = upstream.rstrip("/")
        self.sessions: list[tuple[str | None, str | None]] = []
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.sessions.append((request.headers.get("X-Session-ID"), json.loads(body).get("user")))
        async with ClientSession() as http:
            async with http.post(
                self.upstream + request.path.removeprefix("/v1"),
                data=body,
                headers={"Content-Type": "application/json"},
            ) as upstream:
                response = web.StreamResponse(
                    status=upstream.status, headers={"Content-Type": upstream.content_type}
                )
                await response.prepare(request)
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
                await response.write_eof()
                return response

    async def __aenter__(self) -> _SessionRecorder:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._forward)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        self.base_url = f"http://127.0.0.1:{port}/v1"
        return self

    async def __aexit__(self, *exc) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


async def test_several_sessions_at_once_each_with_its_header(vllm):
    vllm.script(min_tokens=16)
    ids = [f"session-{i}" for i in range(4)]
    async with _SessionRecorder(vllm.base_url) as router:
        services = [_stage(_config(router.base_url, vllm.served_name, max_new_tokens=16), sid) for sid in ids]

        async def one(service, seed):
            async with StageHarness(service) as h:
                await h.send(make_utterance(1.0, seed=seed))
                await h.wait_down(count(LLMFullResponseEndFrame))
                await h.send(make_utterance(1.0, seed=seed + 100))
                await h.wait_down(count(LLMFullResponseEndFrame, 2))
            return h

        harnesses = await asyncio.gather(*(one(s, i) for i, s in enumerate(services)))
    for h in harnesses:
        assert not _errors(h.up), _errors(h.up)
        assert len(_texts(h.down)) >= 2 * 16  # min_tokens: 16 one-character tokens per answer
    assert sorted(router.sessions) == sorted((sid, sid) for sid in ids for _ in range(2))
    for service in services:  # each session's second turn reused its own first turn's prefix
        second = service.turn_stats[1]
        assert second.prefill_tokens < second.prompt_tokens - 375, second


async def test_server_killed_mid_answer_then_slow_to_restart(vllm):
    service = _stage(_config(vllm.base_url, vllm.served_name, max_new_tokens=200))
    async with StageHarness(service) as h:
        # A long, slow answer (EOS forbidden, 50 ms a step): still streaming when the server dies.
        vllm.script(min_tokens=200, step_delay_ms=50)
        await h.send(make_utterance(1.0, seed=11))
        await h.wait_down(lambda frames: len(_texts(frames)) >= 3)
        vllm.kill()
        await h.wait_up(count(ErrorFrame, 1))
        await h.wait_down(count(LLMFullResponseEndFrame, 1))
        spoken = _texts(h.down)
        assert service.history[1].role == "assistant" and service.history[1].text == spoken

        # Restarting: the turns that come while it loads fail clearly, the session lives on.
        vllm.script()
        vllm.launch()
        await h.send(make_utterance(1.0, seed=12))
        await h.wait_up(count(ErrorFrame, 2))
        await h.wait_down(count(LLMFullResponseEndFrame, 2))
        await asyncio.to_thread(vllm.wait_ready)

        vllm.script(reply="back again.")
        await h.send(make_utterance(1.0, seed=13))
        await h.wait_down(count(LLMFullResponseEndFrame, 3))

    errors = _errors(h.up)
    assert len(errors) == 2 and not any(e.fatal for e in errors), errors
    assert "vLLM" in errors[0].error
    assert f"cannot reach vLLM at {vllm.base_url}" in errors[1].error
    assert _texts(h.down).endswith("back again.")
    assert [bool(s.error) for s in service.turn_stats] == [True, True, False]
    assert service.is_usable
