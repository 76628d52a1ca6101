"""The default browser bot: talk to Voxtral from a web page over WebRTC.

Run (real models; the first run downloads them from the HuggingFace hub):

    python examples/browser_bot.py

Offline, with the dummy models (real architectures, random weights: they talk nonsense):

    python examples/browser_bot.py --model dummy:tiny --tts-model dummy:tiny

Then open http://127.0.0.1:7860/, press Connect and allow the microphone. The page shows the bot's
answer word by word and each turn's latency waterfall. This is what ``make run`` starts
(``voxtral-pipeline run``); ``-t daily`` joins a Daily room instead, as in pipecat's runner.

Under pipecat's own development runner (its server, its prebuilt UI at /client, Daily rooms, and
the telephony WebSockets), the same bot through ``bot(runner_args)``; models load once per process:

    python examples/browser_bot.py --pipecat-runner -t webrtc --model dummy:tiny --tts-model dummy:tiny
    python examples/browser_bot.py --pipecat-runner -t twilio -x YOUR_PROXY_HOST
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
    parser.add_argument("-t", "--transport", choices=["webrtc", "daily"], default="webrtc")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7860)
    args = parser.parse_args()
    if args.transport == "daily":
        from daily_bot import run_daily

        await run_daily(config_from(args, **{"transport.kind": "daily"}))
        return
    config = config_from(args, **{"transport.server.host": args.host, "transport.server.port": args.port})
    models = await asyncio.to_thread(SharedModels.load, config)  # once; shared by every session
    server = BotServer(config, models)
    print(f"open {await server.start()} in a browser and allow the microphone (Ctrl-C to stop)", flush=True)
    await server.serve_forever()


if __name__ == "__main__":
    if "--pipecat-runner" in sys.argv:
        from pipecat.runner.run import main as pipecat_runner

        sys.argv.remove("--pipecat-runner")
        pipecat_runner(
            model_args(argparse.ArgumentParser(description="pipecat's runner with the Voxtral bot"))
        )
        sys.exit(0)
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
