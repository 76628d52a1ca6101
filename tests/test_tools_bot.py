"""examples/tools_bot.py: offline --help, and a whole session on the file transport with dummy models
constrained to call its two tools (an order lookup, then end_call, which ends the session)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile as sf
from pipecat.frames.frames import EndTaskFrame

from tests.voxtral_fixtures import ForcedGeneration, tiny_ids, tiny_tool_call
from voxtral_pipeline.models.tekken import EOS_TOKEN_ID
from voxtral_pipeline.testing.speech import conversation, needs_espeak, speak, write_wav

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "tools_bot.py"
END_INST = 4  # [/INST]: a new user turn
END_TOOL_RESULTS = 8  # [/TOOL_RESULTS]: the answer after a call


def _load_example():
    spec = importlib.util.spec_from_file_location("tools_bot", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def test_help_works_offline():
    proc = subprocess.run(
        [sys.executable, str(EXAMPLE), "--help"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "--input" in proc.stdout and "--transport" in proc.stdout and "Traceback" not in proc.stderr


@needs_espeak
async def test_order_lookup_then_end_call_ends_the_session_after_the_goodbye(tmp_path, monkeypatch):
    from voxtral_pipeline.processors.voxtral.backend import shared_bundle

    bot = _load_example()
    monkeypatch.setattr(bot, "LOOKUP_SECS", 0.0)
    # One turn calls both tools in a row (two rounds), then says goodbye; the second question
    # must never be heard. (One turn, so how the turn stage segments speech does not matter.)
    questions = ["Where is my order A one two three", "Are you still there"]
    gap, lead = 5.0, 0.5
    wav = write_wav(tmp_path / "in.wav", conversation(questions, gap_secs=gap, lead_secs=lead))
    second_at = lead + len(speak(questions[0])) / 16000 + gap
    out = tmp_path / "out.wav"
    config = bot.parse_config(
        [
            "--model", "dummy:tiny", "--tts-model", "dummy:tiny", "--input", str(wav), "--output", str(out),
            "--set", "voxtral.seed=0", "--set", "voxtral.temperature=0", "--set", "voxtral.max_new_tokens=96",
            "--set", "voxtral.warmup=false", "--set", "voxtral.transcribe_history=false",
        ]
    )  # fmt: skip
    assert "get_order_status" in config.voxtral.instructions
    steps = [
        tiny_tool_call(("get_order_status", {"order_id": "a123"})),
        tiny_tool_call(("end_call", {})),
        tiny_ids("it is shipped. bye.") + [EOS_TOKEN_ID],
    ]

    def plan(prompt: list[int]) -> list[int] | None:
        """The lookup, then (after its result) end_call, then (after that result) the goodbye."""
        if prompt[-1] == END_INST and len(steps) == 3 or prompt[-1] == END_TOOL_RESULTS and steps:
            return steps.pop(0)
        return None

    bundle = shared_bundle(config.voxtral)  # the one the stage will use
    ForcedGeneration(bundle.model, monkeypatch, plan)
    ended_by: list[EndTaskFrame] = []
    real_push = bot.VoxtralLLMService.push_frame

    async def push_frame(self, frame, direction=bot.FrameDirection.DOWNSTREAM):
        if isinstance(frame, EndTaskFrame):
            ended_by.append(frame)
        await real_push(self, frame, direction)

    monkeypatch.setattr(bot.VoxtralLLMService, "push_frame", push_frame)
    voice, report = await bot.run_bot(config)

    assert voice.fatal_error is None
    stats = voice.voxtral.turn_stats
    brief = [
        (s.audio_secs, s.dropped, s.interrupted, s.speech_end_time - stats[0].speech_end_time) for s in stats
    ]
    assert len(stats) == 1 and len(ended_by) == 1, brief  # the second question was never heard
    turn = stats[0]
    assert [c.name for c in turn.tool_calls] == ["get_order_status", "end_call"]
    assert all(c.error is None for c in turn.tool_calls)
    assert turn.tool_calls[0].result == {"order_id": "A123", **bot.ORDERS["A123"]}
    assert turn.text == "it is shipped. bye." and not turn.interrupted  # only the answer is said
    assert turn.generate_calls == 3
    # The goodbye was spoken before the session ended: the bot's side of the recording has it.
    recording, rate = sf.read(str(out), dtype="float32")
    assert report["turns"][0]["reply_text"] == "it is shipped. bye."
    assert np.abs(recording[int(report["turns"][0]["user_end_s"] * rate) :, 1]).max() > 0.01
    assert len(recording) / rate < second_at
