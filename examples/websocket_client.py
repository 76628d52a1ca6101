"""WebSocket client for the bot: streams a WAV like a microphone, records the bot, prints events.

Start a bot first (``python examples/websocket_bot.py --model dummy:tiny --tts-model dummy:tiny``),
then:

    python examples/websocket_client.py examples/audio/three_questions.wav --output out/ws_reply.wav

It speaks pipecat's protocol with pipecat's own ``ProtobufFrameSerializer``: every 20 ms it sends
an ``audio`` frame (16 kHz, 16-bit mono PCM); it receives the bot's ``audio`` frames (24 kHz, 20 ms
each) and ``message`` frames (JSON: ``bot-text`` word by word, ``turn-metrics`` per turn). After
the file it keeps sending silence until the bot has been quiet for ``--idle`` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

import numpy as np
import soundfile as sf
import websockets
from loguru import logger
from pipecat.frames.frames import InputAudioRawFrame, InputTransportMessageFrame, OutputAudioRawFrame
from pipecat.serializers.protobuf import ProtobufFrameSerializer

from voxtral_pipeline.audio import float_to_pcm16, pcm16_to_float, resample

RATE = 16000
STEP = RATE // 50  # 20 ms


async def talk(url: str, wav: str, output: str | None, idle: float) -> None:
    data, rate = sf.read(wav, dtype="float32", always_2d=True)
    pcm = float_to_pcm16(resample(data.mean(axis=1), rate, RATE))
    ser = ProtobufFrameSerializer()
    bot_audio: list[bytes] = []
    bot_rate = 24000
    last_bot = time.monotonic()
    shown: set[int] = set()

    async with websockets.connect(url, max_size=None) as ws:

        async def receive():
            nonlocal bot_rate, last_bot
            async for raw in ws:
                frame = await ser.deserialize(raw)
                if isinstance(frame, InputAudioRawFrame):  # the bot's voice
                    bot_audio.append(frame.audio)
                    bot_rate = frame.sample_rate
                    last_bot = time.monotonic()
                elif isinstance(frame, InputTransportMessageFrame):
                    event = frame.message
                    if event["type"] == "bot-text":
                        print(event["text"], end="", flush=True)
                    elif event["type"] == "user-turn":
                        print(f"\n[you: {event['duration_s']:.1f} s] bot:", end="", flush=True)
                    elif event["type"] == "turn-metrics" and event["turn"] not in shown:
                        shown.add(event["turn"])  # the first report (bot done speaking) is enough here
                        print(f"\n[turn {event['turn']}: voice-to-voice {event['voice_to_voice_ms']} ms]")

        receiver = asyncio.create_task(receive())
        start, n = time.monotonic(), 0
        try:
            while True:
                chunk = pcm[n * STEP * 2 : (n + 1) * STEP * 2]
                if not chunk:
                    if time.monotonic() - last_bot > idle and n * STEP > len(pcm) // 2 + idle * RATE:
                        break
                    chunk = b""
                chunk += b"\x00" * (STEP * 2 - len(chunk))
                await ws.send(await ser.serialize(OutputAudioRawFrame(chunk, RATE, 1)))
                n += 1
                await asyncio.sleep(max(0.0, start + n * 0.02 - time.monotonic()))
        finally:
            receiver.cancel()
    print()
    if output:
        audio = pcm16_to_float(b"".join(bot_audio)) if bot_audio else np.zeros(0, np.float32)
        sf.write(output, audio, bot_rate)
        print(f"wrote {output} ({len(audio) / bot_rate:.1f} s of bot audio)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wav", help="what to say: any WAV file")
    parser.add_argument(
        "--url", default="ws://127.0.0.1:7860/ws", help="the bot (add ?token=... if it wants one)"
    )
    parser.add_argument("--output", "-o", help="write the bot's audio to this WAV")
    parser.add_argument("--idle", type=float, default=3.0, help="stop after the bot is quiet this long")
    args = parser.parse_args()
    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    asyncio.run(talk(args.url, args.wav, args.output, args.idle))


if __name__ == "__main__":
    main()
