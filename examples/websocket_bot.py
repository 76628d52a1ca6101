"""A WebSocket bot: pipecat's protobuf frames over a WebSocket, for your own app or a bridge.

Run the bot (offline with dummy models; drop the two flags for the real ones):

    python examples/websocket_bot.py --model dummy:tiny --tts-model dummy:tiny

then talk to it with the client example, which streams a WAV file and records the answer:

    python examples/websocket_client.py examples/audio/three_questions.wav --output out/ws_reply.wav

The protocol (pipecat's ``frames.proto``: ``audio`` frames both ways, 20 ms bot packets, JSON
``message`` frames with the bot's words and each turn's latency) is in docs/transports.md. The
CLI does the same with ``voxtral-pipeline run -t websocket``.

Under pipecat's development runner (``bot(runner_args)``, models loaded once per process):
``python examples/websocket_bot.py --pipecat-runner -t websocket``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import bot, config_from, model_args, pipecat_runner_requested  # noqa: E402, F401 - bot: pipecat's runner

from voxtral_pipeline.server import BotServer, SharedModels  # noqa: E402


async def main() -> None:
    parser = model_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--token", help="shared secret clients must send (?token= or Authorization: Bearer)")
    args = parser.parse_args()
    config = config_from(
        args,
        **{
            "transport.kind": "websocket",
            "transport.server.host": args.host,
            "transport.server.port": args.port,
            "transport.server.token": args.token,
        },
    )
    models = await asyncio.to_thread(SharedModels.load, config)
    server = BotServer(config, models)
    print(f"WebSocket bot at {await server.start()} (Ctrl-C to stop)", flush=True)
    await server.serve_forever()


if __name__ == "__main__":
    if pipecat_runner_requested():
        sys.exit(0)
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
