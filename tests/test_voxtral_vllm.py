"""The Voxtral stage on the vLLM backend, against a local server speaking vLLM's protocol."""

from __future__ import annotations

import socket
import threading

import numpy as np
import pytest
from pipecat.frames.frames import ErrorFrame, LLMFullResponseEndFrame, LLMTextFrame, MetricsFrame
from pipecat.metrics.metrics import LLMUsageMetricsData

from tests.vllm_protocol_server import VLLMProtocolServer
from tests.voxtral_fixtures import StageHarness, count, make_utterance, tiny_bundle_fixture, wait_until  # noqa: F401
from voxtral_pipeline.audio import pcm16_to_float
from voxtral_pipeline.config import VoxtralConfig
from voxtral_pipeline.engine import EngineResult
from voxtral_pipeline.processors.voxtral import VoxtralLLMService
from voxtral_pipeline.processors.voxtral.vllm import VLLMClient, finish_reason


def _config(base_url: str, **vllm) -> VoxtralConfig:
    return VoxtralConfig(
        backend="vllm",
        model="dummy:tiny",  # never loaded with the vLLM backend
        max_new_tokens=64,
        instructions="Be brief.",
        transcribe_history=False,
        vllm={"base_url": base_url, "api_key": "secret", **vllm},
    )


def _texts(frames) -> list[str]:
    return [f.text for f in frames if isinstance(f, LLMTextFrame)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_streams_each_chunk_with_the_body_vllm_expects(tiny_bundle):
    async with VLLMProtocolServer(tiny_bundle.tokenizer, api_key="secret") as server:
        service = VoxtralLLMService(_config(server.base_url), session_id="session-42")
        utterance = make_utterance(1.5, seed=3)
        async with StageHarness(service) as h:
            await h.send(utterance)
            await h.wait_down(count(LLMFullResponseEndFrame))
            await h.send(make_utterance(1.0, seed=4))
            await h.wait_down(count(LLMFullResponseEndFrame, 2))

    assert not [f for f in h.up if isinstance(f, ErrorFrame)]
    assert "".join(_texts(h.down)) == 2 * "".join(server.reply_words)
    assert len(_texts(h.down)) == 2 * len(server.reply_words)  # one frame per streamed chunk
    first, second = server.requests
    assert first.headers["X-Session-ID"] == "session-42" and first.body["user"] == "session-42"
    assert first.headers["Authorization"] == "Bearer secret"
    assert first.body["model"] == "mistralai/Voxtral-Mini-3B-2507" and first.body["stream"] is True
    assert first.body["temperature"] == 0.2 and first.body["top_p"] == 0.95 and first.body["max_tokens"] == 64
    # The audio the server decoded is the user's utterance.
    assert np.allclose(first.audios[0], pcm16_to_float(utterance.audio), atol=1e-4)
    assert first.body["messages"][0]["content"][1] == {"type": "text", "text": "Be brief."}
    # The second request carries the first answer as what was said, and both audios.
    assert [m["role"] for m in second.body["messages"]] == ["user", "assistant", "user"]
    assert second.body["messages"][1]["content"] == "".join(server.reply_words)
    assert len(second.audios) == 2
    stats = service.turn_stats
    assert [s.generate_calls for s in stats] == [1, 1]
    assert stats[1].prompt_tokens == second.prompt_tokens > 2 * 375
    usage = [
        d.value
        for f in h.down
        if isinstance(f, MetricsFrame)
        for d in f.data
        if isinstance(d, LLMUsageMetricsData)
    ]
    assert [u.prompt_tokens for u in usage] == [first.prompt_tokens, second.prompt_tokens]


async def test_at_most_five_audios_older_turns_as_transcripts(tiny_bundle):
    async with VLLMProtocolServer(tiny_bundle.tokenizer) as server:
        config = _config(server.base_url, api_key=None).model_copy(
            update={"transcribe_history": True, "history_audio_turns": 8}
        )
        service = VoxtralLLMService(config)
        async with StageHarness(service) as h:
            for i in range(7):
                await h.send(make_utterance(1.0, seed=30 + i))
                await h.wait_down(count(LLMFullResponseEndFrame, i + 1))
                await wait_until(lambda n=i + 1: len(server.transcriptions) >= n, "idle-time transcript")

    assert not [f for f in h.up if isinstance(f, ErrorFrame)]
    last = server.requests[-1]
    assert len(last.audios) == 5  # vLLM's cap, though the audio budget would allow 8
    users = [m for m in last.body["messages"] if m["role"] == "user"]
    assert users[0]["content"][-1]["text"].endswith("transcript 1")
    assert users[1]["content"] == [{"type": "text", "text": "transcript 2"}]
    assert all(part["type"] == "input_audio" for m in users[2:] for part in m["content"][:1])


async def test_errors_and_timeouts_become_error_frames_and_the_next_turn_works(tiny_bundle):
    async with VLLMProtocolServer(tiny_bundle.tokenizer) as server:
        service = VoxtralLLMService(_config(server.base_url, first_token_timeout_secs=0.5))
        async with StageHarness(service) as h:
            server.fail_next = 500
            await h.send(make_utterance(1.0, seed=1))
            await h.wait_up(count(ErrorFrame, 1))
            await h.wait_down(count(LLMFullResponseEndFrame, 1))

            server.hang_next = True
            await h.send(make_utterance(1.0, seed=2))
            await h.wait_up(count(ErrorFrame, 2))
            await h.wait_down(count(LLMFullResponseEndFrame, 2))

            server.drop_next = True
            await h.send(make_utterance(1.0, seed=3))
            await h.wait_up(count(ErrorFrame, 3))
            await h.wait_down(count(LLMFullResponseEndFrame, 3))

            await h.send(make_utterance(1.0, seed=4))
            await h.wait_down(count(LLMFullResponseEndFrame, 4))

    errors = [f.error for f in h.up if isinstance(f, ErrorFrame)]
    assert len(errors) == 3 and not any(f.fatal for f in h.up if isinstance(f, ErrorFrame))
    assert "HTTP 500" in errors[0] and "timed out" in errors[1]
    assert service.is_usable
    assert "".join(_texts(h.down)).endswith("".join(server.reply_words))
    stats = service.turn_stats
    assert [bool(s.error) for s in stats] == [True, True, True, False]
    # The context keeps what was sent before the connection dropped.
    assert stats[2].text == "".join(server.reply_words[:2])
    assert service.history[5].role == "assistant" and service.history[5].text == stats[2].text


async def test_unreachable_server_is_a_clear_error(tiny_bundle):
    service = VoxtralLLMService(_config(f"http://127.0.0.1:{_free_port()}/v1"))
    async with StageHarness(service) as h:
        await h.send(make_utterance(1.0))
        await h.wait_up(count(ErrorFrame))
    errors = [f.error for f in h.up if isinstance(f, ErrorFrame)]
    assert len(errors) == 1 and "cannot reach vLLM at http://127.0.0.1:" in errors[0]


@pytest.mark.parametrize(
    "reported, completion_tokens, expected",
    [
        ("stop", 5, "stop"),
        ("length", 64, "length"),
        ("length", None, "length"),  # no usage sent: the server's word
        ("tool_calls", 12, "stop"),
        ("tool_calls", 64, "length"),  # vLLM's word for a call max_tokens cut: the usage tells
        (None, None, None),  # the stream never said how it ended
    ],
)
def test_finish_reason_reads_the_usage_where_vllm_says_tool_calls(reported, completion_tokens, expected):
    assert finish_reason(reported, completion_tokens, 64) == expected


async def test_the_stream_says_whether_max_tokens_cut_the_answer(tiny_bundle):
    async with VLLMProtocolServer(tiny_bundle.tokenizer) as server:
        client = VLLMClient(_config(server.base_url, api_key=None).vllm, "s")
        try:
            ends = []
            for max_tokens in (3, 64):
                body = client.chat_body(
                    [{"role": "user", "content": "Hi"}], max_tokens=max_tokens, temperature=0.0, top_p=1.0
                )
                result = EngineResult()
                text = "".join([t async for t in client.stream_chat(body, result, {})])
                ends.append((result.finish_reason, text))
        finally:
            await client.close()
    words = server.reply_words
    assert ends == [("length", "".join(words[:3])), ("stop", "".join(words))]


async def test_a_transcript_asks_for_the_limit_it_is_given(tiny_bundle):
    """The backend sends the caller's limit (the stage's, the one the in-process engine gets),
    not one of its own; the idle-time transcripts use the one formula for both backends."""
    from voxtral_pipeline.processors.voxtral.backend import VLLMBackend
    from voxtral_pipeline.processors.voxtral.idle import transcript_max_tokens

    async with VLLMProtocolServer(tiny_bundle.tokenizer) as server:
        config = _config(server.base_url, api_key=None)
        backend = VLLMBackend(config, "s")
        await backend.start()
        try:
            for limit in (40, 17):
                text = await backend.transcribe(np.zeros(16000, np.float32), "fr", threading.Event(), limit)
                assert text.startswith("transcript")
        finally:
            await backend.close()
        service = VoxtralLLMService(config.model_copy(update={"transcribe_history": True}))
        async with StageHarness(service) as h:
            await h.send(make_utterance(2.5, seed=5))
            await h.wait_down(count(LLMFullResponseEndFrame))
            await wait_until(lambda: len(server.transcriptions) == 3, "idle-time transcript")
    sent = [(f["max_completion_tokens"], f.get("language")) for f in server.transcription_fields]
    assert sent[:2] == [("40", "fr"), ("17", "fr")]
    assert sent[2][0] == str(transcript_max_tokens(2.5)) == "36"


async def test_min_new_tokens_go_to_vllm_as_min_tokens(tiny_bundle):
    """A fixed answer length (the benchmarks') holds vLLM's end off too: ``min_tokens`` in the body,
    capped at ``max_tokens`` (vLLM refuses more), none without one."""
    async with VLLMProtocolServer(tiny_bundle.tokenizer) as server:
        config = _config(server.base_url, api_key=None)
        reply = len(server.reply_words) + 4  # past where the stand-in's answer would end
        services = [
            VoxtralLLMService(config, min_new_tokens=reply),
            VoxtralLLMService(config, min_new_tokens=500),  # over max_tokens (64)
            VoxtralLLMService(config),
        ]
        texts = []
        for service in services:
            async with StageHarness(service) as h:
                await h.send(make_utterance(1.0))
                await h.wait_down(count(LLMFullResponseEndFrame))
            assert not [f for f in h.up if isinstance(f, ErrorFrame)]
            texts.append(_texts(h.down))
    bodies = [r.body for r in server.requests]
    assert [b.get("min_tokens") for b in bodies] == [reply, 64, None]
    assert [b["max_tokens"] for b in bodies] == [64, 64, 64]
    assert [len(t) for t in texts] == [reply, 64, len(server.reply_words)]
    assert [s.turn_stats[0].completion_tokens for s in services] == [reply, 64, len(server.reply_words)]
