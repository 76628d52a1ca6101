"""The bot's server for the browser (WebRTC) and WebSocket transports: one pipeline per session.

``BotServer`` is a FastAPI app run by uvicorn. Models are loaded once per process
(:class:`SharedModels`) and every session (a peer connection or a WebSocket) gets its own
pipeline built by :func:`~voxtral_pipeline.pipeline.build_pipeline` from the same config, with the
loaded models passed in.

Endpoints (``transport.kind = "webrtc"``), pipecat's runner conventions, so pipecat's own clients
(``@pipecat-ai/client-js`` + ``small-webrtc-transport``, the prebuilt UI) work unchanged:
    ``GET /`` our page (``voxtral_pipeline/web/``); ``GET /client/`` pipecat's prebuilt UI;
    ``POST /api/offer`` SDP offer -> answer; ``PATCH /api/offer`` trickled ICE candidates;
    ``POST /start`` -> ``{sessionId, iceConfig}`` (holds a session slot until its offer comes, at
    most ``media_timeout_secs``); ``POST``/``PATCH /sessions/{sessionId}/api/offer``; ``GET /status``.
Endpoints (``transport.kind = "websocket"``):
    ``WS /ws`` (``transport.websocket.path``), protocol in
    :mod:`voxtral_pipeline.transports.websocket`; ``GET /status``.
Both, with ``metrics.prometheus``: ``GET /metrics``, every session's latency histograms (ms).

Safe defaults: bound to 127.0.0.1 (a warning is logged for any other address); every request
passes :class:`~voxtral_pipeline.server_guard.RequestGuard` first (Host and Origin allow-lists,
JSON-only bodies read within ``max_message_bytes``); with ``transport.server.token`` set, every route
that starts or touches a session needs ``Authorization: Bearer TOKEN``, ``?token=TOKEN`` or the
cookie a page loaded with ``?token=TOKEN`` gets; CORS answers only ``allowed_origins``; at most
``max_sessions`` at once (HTTP 429 for an offer, close code 1013 for a WebSocket); an offer without
usable audio is a 400; a session must prove itself: one that has received no audio within
``media_timeout_secs`` of starting, or for ``audio_idle_secs``, is ended and its slot freed; an
address whose WebSocket was cut off for flooding is refused new sessions for
``flood_cooldown_secs`` (doubled per repeat offence), before any pipeline is built (close 1008
with the seconds left; HTTP 429 with ``Retry-After`` for ``/start`` and offers).
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import hmac
import json
import math
import socket
import time
import uuid
from collections import deque
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import HTMLResponse, JSONResponse, Response
from loguru import logger
from pipecat.frames.frames import InputAudioRawFrame
from pipecat.observers.base_observer import BaseObserver, FramePushed

from voxtral_pipeline.config import PipelineConfig
from voxtral_pipeline.server_guard import FloodCooldown, RequestGuard, allowed_hosts, is_loopback
from voxtral_pipeline.session import SharedModels, build_services
from voxtral_pipeline.transports.events import ClientEventsObserver

WS_CLOSE_BAD_TOKEN = 4401
WS_CLOSE_BUSY = 1013  # "try again later"
#: Close code for a WebSocket from an address in its flood cooldown ("policy violation").
WS_CLOSE_COOLDOWN = 1008
#: Ended sessions kept (for /status, debugging and tests). A pipeline is ~25 MB with the turn
#: stage's ONNX models, so only the newest ended session keeps its pipeline; the others keep their
#: id, kind and info.
FINISHED_KEPT = 4
#: Cookie set on a page loaded with ``?token=``, so pipecat's prebuilt UI (which cannot send our
#: token) is authorized on ``/start`` and the offer; HttpOnly, SameSite=Strict.
TOKEN_COOKIE = "voxtral_token"
#: ICE candidates accepted in one PATCH (a browser trickles a handful).
MAX_CANDIDATES = 64
WEB_FILES = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8"}


def build_session(config: PipelineConfig, transport, models: SharedModels | None = None, observers=None):
    """One session's pipeline on ``transport``: the same stages and code path for every transport.

    With ``models`` the Voxtral and Kokoro stages get the already loaded bundles; without, each
    stage loads its model in ``setup()`` (the CLI's single-session transports).
    """
    from voxtral_pipeline.pipeline import build_pipeline

    voxtral, tts = build_services(config, models)
    events = ClientEventsObserver(transport)
    voice = build_pipeline(
        config, transport, voxtral=voxtral, tts=tts, observers=[events, *(observers or [])]
    )
    events.metrics = voice.metrics
    return voice


def bind_warning(host: str) -> str | None:
    """The warning to log for a bind that other machines can reach, or None for loopback."""
    if is_loopback(host):
        return None
    return (
        f"binding to {host}: the bot is reachable from other machines; set transport.server.token "
        "(--token) and put it behind TLS for anything but a trusted network"
    )


def bind_socket(config: PipelineConfig) -> socket.socket:
    """The server's listening socket, bound now (the CLI does it before loading any model).

    Raises:
        OSError: with a one-line message (an unknown host, an address not on this machine, a port
            in use).
    """
    server_cfg = config.transport.server
    try:
        infos = socket.getaddrinfo(server_cfg.host, server_cfg.port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise OSError(f"cannot listen on {server_cfg.host}:{server_cfg.port}: {e.strerror or e}") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as e:
        sock.close()
        raise OSError(f"cannot listen on {server_cfg.host}:{server_cfg.port}: {e.strerror or e}") from None
    return sock


def parse_candidates(raw: Any) -> list:
    """A PATCH body's ``candidates`` as pipecat ``IceCandidate`` objects.

    pipecat's ``SmallWebRTCRequestHandler`` reads attributes: plain dicts raise ``AttributeError``.

    Raises:
        ValueError: not a list of ``{candidate: str, sdp_mid: str|null, sdp_mline_index: int}``.
    """
    from pipecat.transports.smallwebrtc.request_handler import IceCandidate

    if not isinstance(raw, list) or len(raw) > MAX_CANDIDATES:
        raise ValueError(f"candidates must be a list of at most {MAX_CANDIDATES}")
    out = []
    for c in raw:
        if not isinstance(c, dict):
            raise ValueError("a candidate must be an object")
        candidate, mid, index = c.get("candidate"), c.get("sdp_mid"), c.get("sdp_mline_index")
        if not isinstance(candidate, str) or not (mid is None or isinstance(mid, str)):
            raise ValueError("candidate and sdp_mid must be strings")
        if not isinstance(index, int) or isinstance(index, bool) or index < 0:
            raise ValueError("sdp_mline_index must be a non-negative integer")
        out.append(IceCandidate(candidate=candidate, sdp_mid=mid, sdp_mline_index=index))
    return out


class AudioArrival(BaseObserver):
    """When a session's pipeline started and its input audio last arrived.

    Audio arriving is the proof that a client is really there. The wait for the first audio
    counts from the pipeline's start, not the connection's: setting a session up can take
    seconds on a loaded machine, and no audio can flow before it.
    """

    def __init__(self) -> None:
        super().__init__(observe_every_push=False)
        self.started: float | None = None
        self.last: float | None = None

    async def on_pipeline_started(self) -> None:
        self.started = time.monotonic()

    async def on_push_frame(self, data: FramePushed) -> None:
        if isinstance(data.frame, InputAudioRawFrame):
            self.last = time.monotonic()


def trim_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS.

    glibc keeps freed pages in its arenas: without ``malloc_trim`` a server that has run sessions
    holds hundreds of MB more than it uses (measured in ``benchmarks/flood_bench.py``).
    """
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


@dataclass
class Session:
    id: str
    kind: str
    task: asyncio.Task | None = None
    voice: Any = None
    info: dict[str, Any] = field(default_factory=dict)
    audio: AudioArrival = field(default_factory=AudioArrival)


class BotServer:
    """FastAPI app + uvicorn server for the webrtc and websocket transports."""

    def __init__(self, config: PipelineConfig, models: SharedModels | None = None):
        self.config = config
        self.models = models
        self.sessions: dict[str, Session] = {}
        # The last few ended sessions (for /status and tests); bounded, so a long-running server
        # does not keep every ended pipeline alive.
        self.finished: deque[Session] = deque(maxlen=FINISHED_KEPT)
        self._reserved = 0
        #: ``POST /start`` ids waiting for their offer (id -> monotonic time); each holds a slot.
        self.starts: dict[str, float] = {}
        #: ``/start`` ids whose offer came -> their session (peer connection) id.
        self.started: dict[str, str] = {}
        #: Sessions whose pipeline was built, ever (a refused client never adds one).
        self.sessions_built = 0
        server_cfg = config.transport.server
        #: Addresses cut off for flooding, refused new sessions for a while (None: no cooldown).
        self.cooldown = (
            FloodCooldown(server_cfg.flood_cooldown_secs, server_cfg.flood_cooldown_max_secs)
            if server_cfg.flood_cooldown_secs is not None
            else None
        )
        self._server = None
        self._serve_task: asyncio.Task | None = None
        self._webrtc = None
        self.app = self._build_app()
        #: What uvicorn serves: every route of ``app``, present or added later, behind the guard.
        self.asgi = RequestGuard(
            self.app,
            hosts=allowed_hosts(server_cfg.host, server_cfg.allowed_hosts),
            origins=server_cfg.allowed_origins,
            max_body_bytes=server_cfg.max_message_bytes,
        )

    # --- sessions -------------------------------------------------------------------------

    @property
    def active_sessions(self) -> int:
        self._expire_starts()
        return len(self.sessions) + self._reserved + len(self.starts)

    def _expire_starts(self) -> None:
        """Free the slots of ``/start`` ids whose offer never came within ``media_timeout_secs``."""
        deadline = time.monotonic() - self.config.transport.server.media_timeout_secs
        for start_id, at in list(self.starts.items()):
            if at < deadline:
                del self.starts[start_id]
                logger.info(f"start {start_id}: no offer came; its slot is free")

    def _authorized(self, headers, query, cookies=None) -> bool:
        token = self.config.transport.server.token
        if not token:
            return True
        given = query.get("token") or (cookies or {}).get(TOKEN_COOKIE) or ""
        auth = headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        return hmac.compare_digest(given.encode(), token.encode())

    def _request_authorized(self, request: Request) -> bool:
        return self._authorized(request.headers, request.query_params, request.cookies)

    def _cooling_down(self, client) -> float | None:
        """Seconds the client's address is still refused for after a flood cut-off (None: admitted)."""
        if self.cooldown is None:
            return None
        return self.cooldown.retry_after(client.host if client is not None else None)

    @staticmethod
    def _cooldown_message(left: float) -> str:
        return f"this address was cut off for flooding; try again in {math.ceil(left)} s"

    def _cooldown_response(self, left: float) -> JSONResponse:
        return JSONResponse(
            {"error": self._cooldown_message(left)},
            status_code=429,
            headers={"Retry-After": str(math.ceil(left))},
        )

    def _busy_message(self) -> str:
        n = self.config.transport.server.max_sessions
        return f"the bot is busy: {n} session{'s' if n != 1 else ''} already running; try again later"

    async def _watch(self, session: Session) -> None:
        """End a session that does not prove itself: no audio soon after it started, or for too long."""
        cfg = self.config.transport.server
        first, idle = cfg.media_timeout_secs, cfg.audio_idle_secs
        step = min(1.0, first / 4, (idle or first) / 4)
        while True:
            await asyncio.sleep(step)
            now, last, started = time.monotonic(), session.audio.last, session.audio.started
            if last is None and started is not None and now - started > first:
                reason = f"no audio within {first:g} s of the start"
            elif last is not None and idle is not None and now - last > idle:
                reason = f"no audio for {idle:g} s"
            else:
                continue
            logger.info(f"session {session.id} ({session.kind}): {reason}; ending it")
            session.info["ended_because"] = reason
            await session.voice.worker.cancel(reason=reason)
            return

    async def _run_session(self, session: Session) -> None:
        watch = asyncio.create_task(self._watch(session), name=f"session-watch-{session.id}")
        try:
            report = await session.voice.run()
            session.info["turns"] = report["summary"]["turns"]
        except asyncio.CancelledError:
            pass
        except Exception as e:
            logger.exception(f"session {session.id} failed: {e}")
        finally:
            watch.cancel()
            self.sessions.pop(session.id, None)
            for start_id in [k for k, v in self.started.items() if v == session.id]:
                del self.started[start_id]
            if self.finished:  # only the newest ended session keeps its pipeline (a copy without it)
                self.finished[-1] = replace(self.finished[-1], voice=None)
            self.finished.append(session)
            if session.voice is not None:
                error = session.voice.fatal_error
                if error is not None:
                    logger.error(f"session {session.id}: {error}")
            close = session.info.pop("close", None)
            if close is not None:
                try:
                    await close()
                except Exception as e:  # already gone
                    logger.debug(f"session {session.id}: closing its connection: {e}")
            logger.info(f"session {session.id} ({session.kind}) ended; {len(self.sessions)} active")
            if not self.sessions:
                await asyncio.to_thread(trim_memory)

    # --- app ------------------------------------------------------------------------------

    def _build_app(self) -> FastAPI:
        app = FastAPI(title="voxtral-pipeline", docs_url=None, redoc_url=None, openapi_url=None)
        kind = self.config.transport.kind

        @app.get("/status")
        async def status():
            return {
                "status": "ready",
                "transport": kind,
                "sessions": len(self.sessions),
                "max_sessions": self.config.transport.server.max_sessions,
                "token_required": bool(self.config.transport.server.token),
            }

        if self.config.metrics.prometheus:
            self._add_metrics_route(app)
        origins = self.config.transport.server.allowed_origins
        if origins:
            # The guard has already refused any other Origin; this answers preflights and adds the
            # headers a page on an allowed origin needs to read the answers.
            from starlette.middleware.cors import CORSMiddleware

            app.add_middleware(
                CORSMiddleware,
                allow_origins=["*"] if "*" in origins else origins,
                allow_methods=["GET", "POST", "PATCH", "OPTIONS"],
                allow_headers=["Authorization", "Content-Type"],
                max_age=600,
            )
        if kind == "webrtc":
            self._add_webrtc_routes(app)
        elif kind == "websocket":
            self._add_websocket_route(app)
        else:
            raise ValueError(f"the bot server serves webrtc or websocket, not {kind!r}")
        return app

    def _add_metrics_route(self, app: FastAPI) -> None:
        """``GET /metrics``: every session's per-turn latency histograms, for Prometheus to scrape."""
        from voxtral_pipeline.telemetry.prometheus import CONTENT_TYPE, TurnHistograms

        histograms = TurnHistograms.shared(self.config.metrics.histogram_buckets_ms)

        @app.get("/metrics")
        async def metrics(request: Request):
            if not self._request_authorized(request):
                return JSONResponse({"error": "invalid or missing token"}, status_code=401)
            return Response(histograms.render(), media_type=CONTENT_TYPE)

    def _add_webrtc_routes(self, app: FastAPI) -> None:
        from pipecat.transports.smallwebrtc.request_handler import (
            SmallWebRTCPatchRequest,
            SmallWebRTCRequest,
            SmallWebRTCRequestHandler,
        )

        from voxtral_pipeline.transports.webrtc import (
            build_webrtc_transport,
            ice_servers,
            offer_audio_problem,
        )

        handler = SmallWebRTCRequestHandler(ice_servers=ice_servers(self.config))
        self._webrtc = handler
        limit = self.config.transport.server.max_message_bytes

        @app.get("/")
        async def index():
            return HTMLResponse(_web_file("index.html"))

        @app.get("/app.js")
        async def app_js():
            return Response(_web_file("app.js"), media_type=WEB_FILES["app.js"])

        @app.get("/favicon.ico")
        async def favicon():
            return Response(status_code=204)

        async def read_json(request: Request) -> dict[str, Any] | JSONResponse:
            body = await request.body()  # RequestGuard has read it within the limit already
            if len(body) > limit:
                logger.warning(f"webrtc: refused a {len(body)}-byte offer (limit {limit})")
                return JSONResponse({"error": f"request over {limit} bytes"}, status_code=413)
            try:
                data = json.loads(body)
                if not isinstance(data, dict):
                    raise ValueError("not an object")
                return data
            except Exception:
                logger.warning("webrtc: dropped a malformed offer request")
                return JSONResponse({"error": "malformed request: expected a JSON object"}, status_code=400)

        async def handle_offer(request: Request, start_id: str | None = None):
            if not self._request_authorized(request):
                return JSONResponse({"error": "invalid or missing token"}, status_code=401)
            data = await read_json(request)
            if isinstance(data, JSONResponse):
                return data
            if not isinstance(data.get("sdp"), str) or data.get("type") != "offer":
                return JSONResponse({"error": "expected {sdp, type: 'offer'}"}, status_code=400)
            if data.get("pc_id") is not None and not isinstance(data["pc_id"], str):
                return JSONResponse({"error": "pc_id must be a string"}, status_code=400)
            problem = offer_audio_problem(data["sdp"])
            if problem:
                logger.info(f"webrtc: refused an offer: {problem}")
                return JSONResponse({"error": f"unusable offer: {problem}"}, status_code=400)
            renegotiation = bool(data.get("pc_id")) and data["pc_id"] in self.sessions
            if start_id is not None and renegotiation and self.started.get(start_id) != data["pc_id"]:
                return JSONResponse({"error": "pc_id is not this session's"}, status_code=400)
            # A /start id brings the slot it holds; a plain offer needs a free one.
            from_start = not renegotiation and self.starts.pop(start_id or "", None) is not None
            if start_id is not None and not renegotiation and not from_start:
                return JSONResponse({"error": "no such session (POST /start first)"}, status_code=404)
            left = None if renegotiation or from_start else self._cooling_down(request.client)
            if left is not None:
                return self._cooldown_response(left)
            if (
                not renegotiation
                and not from_start
                and self.active_sessions >= self.config.transport.server.max_sessions
            ):
                logger.info("webrtc: refused a session, at the limit")
                return JSONResponse({"error": self._busy_message()}, status_code=429)
            if not renegotiation:
                data.pop("pc_id", None)
                self._reserved += 1
            try:
                req = SmallWebRTCRequest(
                    sdp=data["sdp"],
                    type="offer",
                    pc_id=data.get("pc_id"),
                    restart_pc=data.get("restart_pc") is True,
                )

                async def on_connection(connection):
                    self._start_webrtc_session(connection, build_webrtc_transport)

                answer = await handler.handle_web_request(req, on_connection)
            except Exception as e:
                logger.warning(f"webrtc: offer failed: {e}")
                return JSONResponse({"error": f"offer failed: {e}"}, status_code=400)
            finally:
                if not renegotiation:
                    self._reserved -= 1
            if start_id is not None and isinstance(answer, dict) and answer.get("pc_id"):
                self.started[start_id] = answer["pc_id"]
            return answer

        async def handle_candidates(request: Request, start_id: str | None = None):
            if not self._request_authorized(request):
                return JSONResponse({"error": "invalid or missing token"}, status_code=401)
            data = await read_json(request)
            if isinstance(data, JSONResponse):
                return data
            pc_id = data.get("pc_id")
            try:
                if not isinstance(pc_id, str):
                    raise ValueError("pc_id must be a string")
                patch = SmallWebRTCPatchRequest(
                    pc_id=pc_id, candidates=parse_candidates(data.get("candidates"))
                )
            except ValueError as e:
                return JSONResponse({"error": f"malformed ICE candidate request: {e}"}, status_code=400)
            known = pc_id in self.sessions and (start_id is None or self.started.get(start_id) == pc_id)
            if not known:
                return JSONResponse({"error": "no such session"}, status_code=404)
            try:
                await handler.handle_patch_request(patch)
            except Exception as e:
                logger.info(f"webrtc: dropped ICE candidates: {e}")
                return JSONResponse({"error": "malformed ICE candidate request"}, status_code=400)
            return {"status": "success"}

        @app.post("/api/offer")
        async def offer(request: Request):
            return await handle_offer(request)

        @app.patch("/api/offer")
        async def ice_candidates(request: Request):
            return await handle_candidates(request)

        @app.post("/start")
        async def start(request: Request):
            """pipecat's runner convention: a session id (holding a slot) and the ICE servers."""
            if not self._request_authorized(request):
                return JSONResponse({"error": "invalid or missing token"}, status_code=401)
            data = await read_json(request) if (await request.body()).strip() else {}
            if isinstance(data, JSONResponse):
                return data
            transport = data.get("transport", "webrtc")
            if transport != "webrtc":
                return JSONResponse({"error": f"this bot serves webrtc, not {transport!r}"}, status_code=400)
            left = self._cooling_down(request.client)
            if left is not None:
                return self._cooldown_response(left)
            if self.active_sessions >= self.config.transport.server.max_sessions:
                logger.info("webrtc: refused a /start, at the limit")
                return JSONResponse({"error": self._busy_message()}, status_code=429)
            start_id = str(uuid.uuid4())
            self.starts[start_id] = time.monotonic()
            servers = [{"urls": [url]} for url in self.config.transport.webrtc.ice_servers]
            return {"sessionId": start_id, "iceConfig": {"iceServers": servers}}

        @app.post("/sessions/{start_id}/api/offer")
        async def session_offer(start_id: str, request: Request):
            return await handle_offer(request, start_id)

        @app.patch("/sessions/{start_id}/api/offer")
        async def session_candidates(start_id: str, request: Request):
            return await handle_candidates(request, start_id)

        self._add_prebuilt_ui(app)

    def _add_prebuilt_ui(self, app: FastAPI) -> None:
        """pipecat's prebuilt UI (``pipecat-ai-prebuilt``) at ``/client/``, as pipecat's runner serves it.

        It calls ``/start`` without our token: loaded as ``/client/?token=TOKEN`` it gets the token
        in an HttpOnly, SameSite=Strict cookie that ``/start`` and the offer accept.
        """
        try:
            import contextlib
            import io

            with contextlib.redirect_stdout(io.StringIO()):  # it prints where it looked for its files
                from pipecat_ai_prebuilt.frontend import PipecatPrebuiltUI
        except Exception as e:  # not installed: our page still works
            logger.debug(f"pipecat's prebuilt UI is not available: {e}")
            return
        from fastapi.responses import RedirectResponse

        index = Path(PipecatPrebuiltUI.directory) / "index.html"

        @app.get("/client")
        async def client_redirect(request: Request):
            query = f"?{request.url.query}" if request.url.query else ""
            return RedirectResponse(url=f"/client/{query}")

        @app.get("/client/")
        async def client_index(request: Request):
            response = HTMLResponse(index.read_bytes())
            token = request.query_params.get("token")
            if token and self._authorized({}, {"token": token}):
                response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict", path="/")
            return response

        app.mount("/client", PipecatPrebuiltUI)

    def _start_webrtc_session(self, connection, build_transport) -> None:
        transport = build_transport(self.config, connection)
        session = Session(connection.pc_id, "webrtc")
        self.sessions_built += 1
        session.voice = build_session(self.config, transport, self.models, observers=[session.audio])
        session.info["close"] = connection.disconnect

        @transport.event_handler("on_client_disconnected")
        async def _gone(_transport, _client):
            if session.voice is not None:  # None once an ended session gave its pipeline up
                await session.voice.worker.cancel(reason="client disconnected")

        self.sessions[session.id] = session
        session.task = asyncio.create_task(self._run_session(session), name=f"session-{session.id}")
        timeout = self.config.transport.server.session_timeout_secs
        if timeout:
            asyncio.get_running_loop().call_later(timeout, lambda: session.task and session.task.cancel())
        logger.info(f"session {session.id} (webrtc) started; {len(self.sessions)} active")

    def _add_websocket_route(self, app: FastAPI) -> None:
        from voxtral_pipeline.transports.websocket import build_websocket_transport

        path = self.config.transport.websocket.path

        @app.get("/")
        async def index():
            return JSONResponse(
                {"service": "voxtral-pipeline", "websocket": path, "protocol": "pipecat frames.proto"}
            )

        @app.websocket(path)
        async def ws_endpoint(websocket: WebSocket):
            await websocket.accept()
            if not self._authorized(websocket.headers, websocket.query_params):
                logger.info("websocket: refused a client with a wrong or missing token")
                await websocket.close(WS_CLOSE_BAD_TOKEN, "invalid or missing token")
                return
            left = self._cooling_down(websocket.client)
            if left is not None:  # logged once per cooldown by the table
                await websocket.close(WS_CLOSE_COOLDOWN, self._cooldown_message(left))
                return
            if self.active_sessions >= self.config.transport.server.max_sessions:
                logger.info("websocket: refused a session, at the limit")
                await websocket.close(WS_CLOSE_BUSY, self._busy_message())
                return
            session = Session(uuid.uuid4().hex[:12], "websocket")
            self.sessions[session.id] = session
            self.sessions_built += 1
            host = websocket.client.host if websocket.client is not None else None

            def flooded() -> None:
                if self.cooldown is not None:
                    self.cooldown.strike(host)

            try:
                transport = build_websocket_transport(self.config, websocket, on_flood=flooded)
                session.voice = build_session(self.config, transport, self.models, observers=[session.audio])

                @transport.event_handler("on_client_disconnected")
                async def _gone(_transport, _ws):
                    if session.voice is not None:  # None once an ended session gave its pipeline up
                        await session.voice.worker.cancel(reason="client disconnected")

                @transport.event_handler("on_session_timeout")
                async def _timeout(_transport, _ws):
                    if session.voice is not None:
                        await session.voice.worker.cancel(reason="session timeout")

                logger.info(f"session {session.id} (websocket) started; {len(self.sessions)} active")
                session.task = asyncio.current_task()
                await self._run_session(session)
            finally:
                self.sessions.pop(session.id, None)

    # --- serving --------------------------------------------------------------------------

    async def start(self, sock: socket.socket | None = None) -> str:
        """Serve in the background on ``sock`` (default: bind one now); return the URL."""
        import uvicorn

        server_cfg = self.config.transport.server
        warning = bind_warning(server_cfg.host)
        if warning:
            logger.warning(warning)
        ws_max = max(2 * server_cfg.max_message_bytes, 1 << 20)
        sock = sock or bind_socket(self.config)
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(self.asgi, log_level="warning", ws_max_size=ws_max, lifespan="off")
        self._server = uvicorn.Server(config)
        self._serve_task = asyncio.create_task(self._server.serve(sockets=[sock]), name="bot-server")
        while not self._server.started:
            if self._serve_task.done():
                await self._serve_task
                raise RuntimeError("the bot server stopped while starting")
            await asyncio.sleep(0.02)
        return self.url

    @property
    def url(self) -> str:
        host = self.config.transport.server.host
        shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        if ":" in shown:
            shown = f"[{shown}]"
        if self.config.transport.kind == "websocket":
            return f"ws://{shown}:{self.port}{self.config.transport.websocket.path}"
        return f"http://{shown}:{self.port}/"

    async def stop(self) -> None:
        """End every session, then the server."""
        for session in list(self.sessions.values()):
            if session.voice is not None:
                await session.voice.worker.cancel(reason="server stopping")
        tasks = [s.task for s in list(self.sessions.values()) if s.task]
        if tasks:
            await asyncio.wait(tasks, timeout=5)
        if self._webrtc is not None:
            await self._webrtc.close()
        if self._server is not None:
            self._server.should_exit = True
        if self._serve_task is not None:
            try:
                await asyncio.wait_for(self._serve_task, 5)
            except (asyncio.TimeoutError, asyncio.CancelledError):
                self._serve_task.cancel()

    async def serve_forever(self) -> None:
        """Serve until cancelled (Ctrl-C)."""
        try:
            await asyncio.Event().wait()
        finally:
            await self.stop()


def _web_file(name: str) -> bytes:
    return resources.files("voxtral_pipeline.web").joinpath(name).read_bytes()
