"""Sessions sharing one engine: a new turn is answered within one quantum of another's long answer.

Also: a WebSocket and a WebRTC session, through two real bot servers in one process, share one
engine and one Kokoro model and are both answered.

Two Voxtral stages (two sessions' pipelines) on one :class:`VoxtralEngine`, through the real
stage code: session A's long answer is held mid-decode until session B's turn is queued, then
let go. B's first token must leave its stage before A's answer ends (A yields after
``quantum_tokens``), and A's answer must be the same as if it had run alone. Nothing here
depends on timing: the order is forced by the gate and the engine's queue.
"""

from __future__ import annotations

import asyncio

from pipecat.frames.frames import LLMFullResponseEndFrame, LLMTextFrame

from tests.voxtral_fixtures import (  # noqa: F401
    GenerateSpy,
    StageHarness,
    count,
    make_utterance,
    tiny_bundle_fixture,
    wait_until,
)
from voxtral_pipeline.config import VoxtralConfig
from voxtral_pipeline.processors.voxtral import VoxtralEngine, VoxtralLLMService
from voxtral_pipeline.testing.speech import needs_espeak

QUANTUM = 8
LONG = 40


def _service(engine: VoxtralEngine, min_new_tokens: int, session: str) -> VoxtralLLMService:
    config = VoxtralConfig(
        model="dummy:tiny", temperature=0.0, max_new_tokens=LONG, transcribe_history=False, warmup=False
    )
    return VoxtralLLMService(config, engine=engine, session_id=session, min_new_tokens=min_new_tokens)


async def test_a_second_session_is_answered_within_one_quantum_of_a_long_answer(tiny_bundle, monkeypatch):
    engine = VoxtralEngine(tiny_bundle, quantum_tokens=QUANTUM)
    alone = VoxtralEngine(tiny_bundle, kv_cache=False)
    spy = GenerateSpy(tiny_bundle.model, monkeypatch)
    spy.gate_at_forward = 3  # A's answer waits after two tokens, until B's turn is queued
    first = []
    spy.gate_when = lambda ids: (first.append(1), len(first) == 1)[1]
    order: list[str] = []
    a, b = _service(engine, LONG, "a"), _service(engine, 4, "b")
    try:
        async with StageHarness(a) as ha, StageHarness(b) as hb:
            await ha.send(make_utterance(1.0, seed=1))
            await asyncio.to_thread(spy.gate_reached.wait, 60)
            await hb.send(make_utterance(1.0, seed=2))
            await wait_until(lambda: engine.answer_waiting(), "B's turn in the engine's queue")
            spy.gate.set()

            async def watch(h: StageHarness, name: str) -> None:
                seen = 0
                while True:
                    frames = h.down
                    for f in frames[seen:]:
                        if isinstance(f, LLMTextFrame):
                            order.append(name)
                        elif isinstance(f, LLMFullResponseEndFrame):
                            order.append(f"{name}-end")
                            return
                    seen = len(frames)
                    await asyncio.sleep(0.005)

            await asyncio.wait_for(asyncio.gather(watch(ha, "a"), watch(hb, "b")), 60)
            await ha.wait_down(count(LLMFullResponseEndFrame))
    finally:
        engine.close()

    # B's first word left its stage before A's answer ended, after at most one more quantum of A.
    assert order.index("b") < order.index("a-end")
    assert order[: order.index("b")].count("a") <= QUANTUM + 1
    sa, sb = a.turn_stats[0], b.turn_stats[0]
    assert sa.preemptions >= 1 and sa.generate_calls == sa.preemptions + 1
    assert sb.completion_tokens >= 4 and not sb.error
    # Yielding and resuming from the KV cache changed nothing in A's answer.
    from voxtral_pipeline.engine import EngineRequest

    monkeypatch.undo()
    try:
        reference = alone.submit(
            EngineRequest("a", conversation=a.context.render()[:-1], max_new_tokens=LONG, min_new_tokens=LONG)
        ).result(60)
    finally:
        alone.close()
    assert sa.text == reference.text


@needs_espeak
async def test_websocket_and_webrtc_sessions_in_one_process_share_one_engine():
    """Two bot servers, two transports, one set of models: both clients are answered."""
    import json

    import aiohttp
    from aiortc import RTCPeerConnection, RTCSessionDescription

    from tests.reliability_helpers import WSClient, poll
    from tests.test_webrtc_transport import SpeechTrack
    from tests.transport_helpers import dummy_config, question_pcm, running_server, shared_models

    models = await asyncio.to_thread(shared_models)
    async with (
        running_server(dummy_config("websocket")) as ws_bot,
        running_server(dummy_config("webrtc")) as rtc_bot,
    ):
        pc = RTCPeerConnection()
        pc.addTrack(SpeechTrack(question_pcm("What is the weather like today?")))
        channel = pc.createDataChannel("events", ordered=True)
        rtc_events: list[dict] = []
        channel.on("message", lambda message: rtc_events.append(json.loads(message)))
        try:
            await pc.setLocalDescription(await pc.createOffer())
            offer = {"sdp": pc.localDescription.sdp, "type": pc.localDescription.type}
            async with aiohttp.ClientSession() as http:
                async with http.post(rtc_bot.url + "api/offer", json=offer) as res:
                    answer = await res.json()
            await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))
            async with WSClient(ws_bot.url) as client:
                await poll(lambda: ws_bot.sessions and rtc_bot.sessions, "both sessions to start")
                sessions = [*ws_bot.sessions.values(), *rtc_bot.sessions.values()]
                await client.stream(question_pcm() + bytes(2 * 16000 * 3))
                await client.wait_for(lambda c: c.count("turn-metrics") > 0, "the WebSocket answer")
                await poll(lambda: any(e["type"] == "turn-metrics" for e in rtc_events), "the WebRTC answer")
        finally:
            await pc.close()

    engine = models.voxtral._shared_engine
    assert [s.voice.voxtral.engine for s in sessions] == [engine, engine]
    assert [s.voice.tts.bundle for s in sessions] == [models.kokoro, models.kokoro]
    for session in sessions:
        stats = session.voice.voxtral.turn_stats
        assert stats and stats[0].completion_tokens > 0 and not stats[0].error
