"""A pipeline assembled in code: our stages plus a stock pipecat processor, on the file transport.

    python examples/custom_pipeline.py --model dummy:tiny --tts-model dummy:tiny

plays examples/audio/three_questions.wav to the bot and writes out/custom_recording.wav, recorded
by pipecat's own ``AudioBufferProcessor`` (user on the left, bot on the right). Every stage is an
ordinary pipecat ``FrameProcessor``: put any of them in your own pipeline, next to pipecat's.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import sys
import wave
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import config_from, model_args  # noqa: E402
from pipecat.pipeline.pipeline import Pipeline  # noqa: E402
from pipecat.pipeline.worker import PipelineParams, PipelineWorker  # noqa: E402
from pipecat.processors.audio.audio_buffer_processor import AudioBufferProcessor  # noqa: E402
from pipecat.workers.runner import WorkerRunner  # noqa: E402

from voxtral_pipeline.processors.chunker import WordChunker  # noqa: E402
from voxtral_pipeline.processors.metrics import MetricsStage  # noqa: E402
from voxtral_pipeline.processors.turns import TurnStage  # noqa: E402
from voxtral_pipeline.session import build_services  # noqa: E402
from voxtral_pipeline.transports.file import FileTransport  # noqa: E402

HERE = Path(__file__).resolve().parent


async def main() -> None:
    parser = model_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--input", "-i", default=str(HERE / "audio" / "three_questions.wav"))
    parser.add_argument("--output", "-o", default="out/custom_recording.wav")
    args = parser.parse_args()
    config = config_from(args)

    transport = FileTransport(config.transport.file.model_copy(update={"input": Path(args.input)}))
    recorder = AudioBufferProcessor(num_channels=2)  # stock pipecat: records both sides
    metrics = MetricsStage(config.metrics)
    voxtral, tts = build_services(config)  # the Voxtral and TTS stages the config names
    voxtral.turn_source = "utterance"  # the turn stage says when a turn ends
    pipeline = Pipeline(
        [
            transport.input(),
            TurnStage(config.turns),
            voxtral,
            WordChunker(config.chunker),
            tts,
            metrics,
            transport.output(),
            recorder,
        ]
    )
    worker = PipelineWorker(
        pipeline,
        params=PipelineParams(audio_in_sample_rate=16000, audio_out_sample_rate=24000, enable_metrics=True),
        observers=[metrics.observer],
        enable_rtvi=False,
        idle_timeout_secs=None,
        setup_timeout_secs=900,
    )

    @recorder.event_handler("on_audio_data")
    async def save(_recorder, audio: bytes, sample_rate: int, num_channels: int):
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        with wave.open(buf, "wb") as w:
            w.setnchannels(num_channels)
            w.setsampwidth(2)
            w.setframerate(sample_rate)
            w.writeframes(audio)
        out.write_bytes(buf.getvalue())
        print(f"wrote {out} ({len(audio) / (2 * num_channels * sample_rate):.1f} s)")

    @worker.event_handler("on_pipeline_started")
    async def start(_worker, _frame):
        await recorder.start_recording()

    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    await runner.run()
    for turn in metrics.turns:
        print(f"turn {turn.index}: {turn.latencies()} reply={turn.reply_text!r}")


if __name__ == "__main__":
    asyncio.run(main())
