"""A Daily bot: Voxtral joins a Daily room and talks with whoever is there.

Join an existing room (add DAILY_TOKEN=... for a private one):

    DAILY_ROOM_URL=https://YOURDOMAIN.daily.co/ROOM python examples/daily_bot.py

Or let the bot create a room that expires in an hour, and print its URL:

    DAILY_API_KEY=... python examples/daily_bot.py

Add ``--model dummy:tiny --tts-model dummy:tiny`` to try it without the real models. Needs the
``daily`` extra (``pip install 'voxtral-pipeline[daily]'``). The CLI does the same with
``voxtral-pipeline run -t daily --room-url URL``.

Under pipecat's development runner (``bot(runner_args)``, models loaded once per process):
``python examples/daily_bot.py --pipecat-runner -t daily``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import bot, config_from, model_args, pipecat_runner_requested  # noqa: E402, F401 - bot: pipecat's runner

from voxtral_pipeline.config import PipelineConfig  # noqa: E402
from voxtral_pipeline.pipeline import build_transport  # noqa: E402
from voxtral_pipeline.server import SharedModels, build_session  # noqa: E402
from voxtral_pipeline.transports.daily import DailyError, resolve_room, run_until_joined_then_done  # noqa: E402


async def run_daily(config: PipelineConfig) -> None:
    try:
        room = await resolve_room(config)
    except DailyError as e:
        sys.exit(f"error: {e}")
    models = await asyncio.to_thread(SharedModels.load, config)
    transport = build_transport(config, room=room)
    voice = build_session(config, transport, models)

    @transport.event_handler("on_first_participant_joined")
    async def _joined(_transport, participant):
        print(f"{participant.get('info', {}).get('userName') or 'someone'} joined: speak!", flush=True)

    print(f"open {room.url} in a browser to talk to the bot", flush=True)
    try:
        report = await run_until_joined_then_done(voice, transport, config.transport.daily.join_timeout_secs)
    except DailyError as e:
        sys.exit(f"error: {e}")
    print(report["summary"])


def main() -> None:
    parser = model_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--room-url", help="room to join (default: DAILY_ROOM_URL, else create one)")
    args = parser.parse_args()
    config = config_from(args, **{"transport.kind": "daily", "transport.daily.room_url": args.room_url})
    asyncio.run(run_daily(config))


if __name__ == "__main__":
    if pipecat_runner_requested():
        sys.exit(0)
    try:
        main()
    except KeyboardInterrupt:
        pass
