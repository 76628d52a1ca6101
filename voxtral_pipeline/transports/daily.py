"""Daily transport: the bot joins a Daily room (pipecat's ``DailyTransport``, daily-python).

The room is ``transport.daily.room_url`` (or the ``DAILY_ROOM_URL`` environment variable), with an
optional meeting token (``transport.daily.token`` or ``DAILY_TOKEN``). With no URL but a Daily
API key in the environment (``DAILY_API_KEY``), :func:`create_room` makes a short-lived room and
an owner token for the bot. Failing to reach Daily or to join is one :class:`DailyError` within
``join_timeout_secs``, never a long hang.

Needs the ``daily`` extra: ``pip install 'voxtral-pipeline[daily]'``.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from loguru import logger

from voxtral_pipeline.config import PipelineConfig
from voxtral_pipeline.transports import audio_params

CANCEL_GRACE_SECS = 3.0


class DailyError(Exception):
    """Daily cannot be used (no room, no API key, unreachable, join refused); meant for the user."""


@dataclass
class DailyRoom:
    """A room to join and the token to join it with (None for a public room)."""

    url: str
    token: str | None = None
    created: bool = False


def _import_daily():
    try:
        from pipecat.transports.daily.transport import DailyParams, DailyTransport
    except Exception as e:  # ImportError, or daily-python's native library failing to load
        raise DailyError(
            f"the Daily transport needs daily-python: pip install 'voxtral-pipeline[daily]' ({e})"
        ) from None
    return DailyParams, DailyTransport


def check_room_url(url: str) -> str:
    """A room URL must be an https URL with a room name, like https://you.daily.co/room."""
    parsed = urlparse(url)
    if parsed.scheme not in ("https", "http") or not parsed.netloc or parsed.path.strip("/") == "":
        raise DailyError(f"not a Daily room URL: {url!r} (expected https://DOMAIN.daily.co/ROOM)")
    return url


def configured_room(config: PipelineConfig, environ: dict[str, str] | None = None) -> DailyRoom | None:
    """The room named by the config or the environment, if any."""
    env = os.environ if environ is None else environ
    daily = config.transport.daily
    url = daily.room_url or env.get("DAILY_ROOM_URL")
    if not url:
        return None
    return DailyRoom(check_room_url(url), daily.token or env.get("DAILY_TOKEN") or None)


async def create_room(config: PipelineConfig, api_key: str) -> DailyRoom:
    """Create a room that expires after ``room_expiry_secs``, and an owner token for the bot."""
    import aiohttp
    from pipecat.transports.daily.utils import DailyRESTHelper, DailyRoomParams, DailyRoomProperties

    daily = config.transport.daily
    timeout = daily.join_timeout_secs
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:
            helper = DailyRESTHelper(
                daily_api_key=api_key, daily_api_url=daily.api_url, aiohttp_session=session
            )
            expiry = time.time() + daily.room_expiry_secs
            params = DailyRoomParams(properties=DailyRoomProperties(exp=expiry))
            room = await asyncio.wait_for(helper.create_room(params), timeout)
            token = await asyncio.wait_for(helper.get_token(room.url, daily.room_expiry_secs), timeout)
    except asyncio.TimeoutError:
        raise DailyError(
            f"could not create a Daily room: {daily.api_url} did not answer in {timeout:g} s"
        ) from None
    except Exception as e:
        raise DailyError(f"could not create a Daily room at {daily.api_url}: {e}") from None
    return DailyRoom(room.url, token, created=True)


async def resolve_room(config: PipelineConfig, environ: dict[str, str] | None = None) -> DailyRoom:
    """The configured room, else a new one made with the API key, else a clear error."""
    env = os.environ if environ is None else environ
    room = configured_room(config, env)
    if room is not None:
        return room
    key_name = config.transport.daily.api_key_env
    api_key = env.get(key_name)
    if not api_key:
        raise DailyError(
            f"no Daily room: pass --room-url (or set DAILY_ROOM_URL), or set {key_name} so the bot can "
            "create one"
        )
    return await create_room(config, api_key)


def daily_params(config: PipelineConfig, **overrides: Any):
    """``DailyParams`` for the bot: audio both ways, no camera, 20 ms output packets."""
    DailyParams, _ = _import_daily()
    params: dict[str, Any] = dict(
        **audio_params(config),
        camera_out_enabled=False,
        api_url=config.transport.daily.api_url,
    )
    params.update(overrides)
    return DailyParams(**params)


def build_daily_transport(config: PipelineConfig, room: DailyRoom | None = None):
    """A ``DailyTransport`` for ``room`` (the configured one when None)."""
    _, DailyTransport = _import_daily()
    room = room or configured_room(config)
    if room is None:
        raise DailyError("no Daily room URL: pass --room-url or set DAILY_ROOM_URL (or use run_daily)")
    return DailyTransport(room.url, room.token, config.transport.daily.bot_name, params=daily_params(config))


async def run_until_joined_then_done(voice, transport, timeout: float) -> dict[str, Any]:
    """Run a built pipeline on a Daily transport; fail with one DailyError if the join fails.

    ``voice`` is a :class:`~voxtral_pipeline.pipeline.VoicePipeline`. pipecat's Daily transport
    reports a failed join through ``on_error`` and carries on; here that, or no join within
    ``timeout`` seconds, cancels the session and raises.
    """
    joined = asyncio.Event()
    failure: list[str] = []

    @transport.event_handler("on_joined")
    async def _on_joined(_transport, _data):
        joined.set()

    @transport.event_handler("on_error")
    async def _on_error(_transport, error):
        if not joined.is_set():
            failure.append(str(error))

    @transport.event_handler("on_participant_left")
    async def _on_left(_transport, participant, reason):
        logger.info(f"Daily participant left ({reason})")

    run = asyncio.ensure_future(voice.run())
    started = time.monotonic()
    while not joined.is_set():
        if run.done():
            break
        if failure or time.monotonic() - started > timeout:
            run.cancel()
            # daily-python may sit on a DNS lookup or a dead connection for a while more: give the
            # session a moment to wind down, but never let it hold the error back.
            await asyncio.wait({run}, timeout=CANCEL_GRACE_SECS)
            why = failure[0] if failure else f"not joined within {timeout:g} s"
            raise DailyError(f"could not join the Daily room: {why}")
        await asyncio.sleep(0.05)
    return await run
