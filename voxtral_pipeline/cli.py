"""``voxtral-pipeline`` command line: run a voice agent from a config file and flags."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

from loguru import logger

from voxtral_pipeline.logs import keep_log_level  # noqa: F401
from voxtral_pipeline.logs import setup_logging as _setup_logging

EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_BAD_INPUT = 2
TRANSPORTS = ("webrtc", "websocket", "daily", "local", "file")


def _add_run_parser(sub) -> None:
    p = sub.add_parser("run", help="run a voice agent", description="Run a voice agent.")
    p.add_argument("--config", "-c", type=Path, help="TOML (or YAML/JSON) config file")
    p.add_argument(
        "--transport",
        "-t",
        choices=TRANSPORTS,
        help="webrtc (browser, the default), websocket, daily, local (microphone) or file "
        "(the default when --input is given)",
    )
    p.add_argument("--host", help="webrtc/websocket: address to bind (default 127.0.0.1)")
    p.add_argument("--port", "-p", type=int, help="webrtc/websocket: port (default 7860)")
    p.add_argument("--token", help="webrtc/websocket: shared secret clients must present")
    p.add_argument("--max-sessions", type=int, help="webrtc/websocket: concurrent sessions (default 4)")
    p.add_argument("--open", action="store_true", help="webrtc: open the page in a browser when ready")
    p.add_argument("--room-url", help="daily: room to join (default DAILY_ROOM_URL, else create one)")
    p.add_argument("--daily-token", help="daily: meeting token for a private room")
    p.add_argument("--input-device", help="local: microphone index or name (see `voxtral-pipeline devices`)")
    p.add_argument("--output-device", help="local: speaker index or name")
    p.add_argument("--input", "-i", help="file transport: input WAV")
    p.add_argument("--output", "-o", help="file transport: stereo WAV to write (user left, bot right)")
    p.add_argument("--report", "-r", help="file transport: JSON report to write")
    p.add_argument("--model", "-m", help="Voxtral model: hub id, local dir, dummy:tiny or dummy:full")
    p.add_argument(
        "--tts-model",
        help="Kokoro model: hub id, local dir, dummy:tiny, dummy:full (torch); a .onnx file or "
        "pypi:kokoro-v1.0-int8 (ONNX Runtime)",
    )
    p.add_argument("--voice", help="Kokoro voice name or .pt path")
    p.add_argument("--device", help="device for both models: auto, cpu, cuda, cuda:N")
    p.add_argument("--metrics-jsonl", help="append one JSON line per turn to this file")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any config key, e.g. --set voxtral.max_new_tokens=64 (repeatable)",
    )
    p.add_argument("--log-level", default="INFO", help="loguru level (default INFO)")


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    kind = args.transport
    if kind is None and args.input:
        kind = "file"  # a WAV to play means the file transport
    out: dict[str, Any] = {
        "transport.kind": kind,
        "transport.server.host": args.host,
        "transport.server.port": args.port,
        "transport.server.token": args.token,
        "transport.server.max_sessions": args.max_sessions,
        "transport.webrtc.open_browser": True if args.open else None,
        "transport.daily.room_url": args.room_url,
        "transport.daily.token": args.daily_token,
        "transport.local.input_device": args.input_device,
        "transport.local.output_device": args.output_device,
        "transport.file.input": args.input,
        "transport.file.output": args.output,
        "transport.file.report": args.report,
        "voxtral.model": args.model,
        "kokoro.model": args.tts_model,
        "kokoro.voice": args.voice,
        "voxtral.device": args.device,
        "kokoro.device": args.device,
        "metrics.jsonl": args.metrics_jsonl,
    }
    for item in args.set:
        if "=" not in item:
            raise ValueError(f"--set needs KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip()] = value
    return out


def _fail(message: str, code: int) -> int:
    print(f"voxtral-pipeline: error: {message}", file=sys.stderr)
    return code


def run_command(args: argparse.Namespace, stopper=None) -> int:
    """Validate everything cheap first, so bad input fails in one line before any model loads.

    ``stopper`` (installed by :func:`main` before anything slow) handles Ctrl-C and SIGTERM: at
    any moment of a file run's start-up they end the process within a second with 130 / 143.
    """
    from voxtral_pipeline.file_run import Stopper

    if stopper is None:
        stopper = Stopper()
        stopper.install()
    return _run_command(args, stopper)


def _run_command(args: argparse.Namespace, stopper) -> int:
    from voxtral_pipeline.config import ConfigError, load_config
    from voxtral_pipeline.models import ModelUnavailableError, parse_model_spec
    from voxtral_pipeline.models.kokoro_onnx import check_kokoro_spec

    try:
        config = load_config(args.config, _overrides(args))
        parse_model_spec(config.voxtral.model, "Voxtral")
        check_kokoro_spec(config.kokoro.model)  # torch specs, or a .onnx file / pypi:kokoro-v1.0-int8
    except (ConfigError, ValueError, ModelUnavailableError) as e:
        return _fail(str(e), EXIT_BAD_INPUT)

    problem = _metrics_problem(config)
    if problem:
        return _fail(problem, EXIT_BAD_INPUT)
    kind = config.transport.kind
    if kind == "file":
        from voxtral_pipeline.transports.file import AudioInputError, check_file_paths

        file_cfg = config.transport.file
        try:
            if file_cfg.input is None:
                raise AudioInputError("the file transport needs an input WAV (--input IN.wav)")
            check_file_paths(file_cfg.input, output=file_cfg.output, report=file_cfg.report)
        except AudioInputError as e:
            return _fail(str(e), EXIT_BAD_INPUT)
    else:
        stopper.uninstall()  # the servers, Daily and the microphone stop on their own handlers
    keep_log_level(args.log_level)
    if config.metrics.prometheus and kind not in ("webrtc", "websocket"):
        logger.warning(f"metrics.prometheus: the {kind} transport has no bot server to serve /metrics on")
    if kind in ("webrtc", "websocket"):
        return _serve(config)
    if kind == "daily":
        return _run_daily(config)

    from voxtral_pipeline.pipeline import build_transport
    from voxtral_pipeline.server import build_session
    from voxtral_pipeline.transports.file import AudioInputError
    from voxtral_pipeline.transports.local import LocalAudioError

    try:
        transport = build_transport(config)
    except (AudioInputError, LocalAudioError) as e:
        return _fail(str(e), EXIT_BAD_INPUT)

    voice = build_session(config, transport)
    if kind == "file":
        from voxtral_pipeline.file_run import exit_code, run_file_session

        report, signum = run_file_session(config, transport, voice, stopper)
        if signum is not None:
            return exit_code(signum)
        if voice.fatal_error is not None:
            return _fail(str(voice.fatal_error), EXIT_RUNTIME)
        return _file_summary(config, report)
    print("voxtral-pipeline: listening on the microphone; speak (Ctrl-C to stop)", flush=True)
    try:
        report = asyncio.run(voice.run())
    except KeyboardInterrupt:
        return _fail("interrupted", EXIT_RUNTIME)
    error = voice.fatal_error
    if error is not None:
        return _fail(str(error), EXIT_RUNTIME)
    print(json.dumps(report["summary"], indent=2))
    return EXIT_OK


def _metrics_problem(config) -> str | None:
    """Why the metrics config cannot work here (a missing optional package), or None."""
    import importlib.util

    wanted = []
    if config.metrics.prometheus:
        wanted.append(("prometheus_client", "metrics.prometheus"))
    if config.metrics.tracing:
        wanted.append(("opentelemetry.sdk", "metrics.tracing"))
        if config.metrics.otlp_endpoint:
            wanted.append(("opentelemetry.exporter.otlp.proto.http", "metrics.otlp_endpoint"))
    for module, key in wanted:
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            return f"{key} needs {module}: pip install 'voxtral-pipeline[metrics]'"
    return None


def _load_models(config):
    """Load the models once for every session; ModelUnavailableError is the caller's to report."""
    from voxtral_pipeline.server import SharedModels

    logger.info(f"loading {config.voxtral.model} and {config.kokoro.model} ...")
    return SharedModels.load(config)


def _serve(config) -> int:
    """Serve the browser page (webrtc) or the WebSocket until Ctrl-C."""
    from voxtral_pipeline.models import ModelUnavailableError
    from voxtral_pipeline.server import BotServer, bind_socket

    try:  # before the models load: a bad host or a port in use fails at once
        sock = bind_socket(config)
    except OSError as e:
        return _fail(str(e), EXIT_RUNTIME)

    async def serve() -> int:
        try:
            models = await asyncio.to_thread(_load_models, config)
        except ModelUnavailableError as e:
            sock.close()
            return _fail(str(e), EXIT_RUNTIME)
        server = BotServer(config, models)
        try:
            url = await server.start(sock)
        except OSError as e:
            return _fail(str(e), EXIT_RUNTIME)
        token = config.transport.server.token
        if config.transport.kind == "webrtc":
            shown = f"{url}?token=<token>" if token else url
            print(f"voxtral-pipeline: open {shown} in a browser and allow the microphone (Ctrl-C to stop)")
            if config.transport.webrtc.open_browser:
                import webbrowser

                webbrowser.open(f"{url}?token={token}" if token else url)
        else:
            print(f"voxtral-pipeline: WebSocket bot at {url} (protocol: docs/transports.md; Ctrl-C to stop)")
        sys.stdout.flush()
        # Ctrl-C and SIGTERM (docker stop, systemd) end every session and the server cleanly.
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, stop.set)
            except (NotImplementedError, RuntimeError, ValueError):  # pragma: no cover - not POSIX
                pass
        try:
            await stop.wait()
        finally:
            await server.stop()
        print("voxtral-pipeline: stopped", file=sys.stderr)
        return EXIT_OK

    try:
        return asyncio.run(serve())
    except KeyboardInterrupt:
        print("voxtral-pipeline: stopped", file=sys.stderr)
        return EXIT_OK


def _run_daily(config) -> int:
    """Join (or create) a Daily room and talk there until the session ends."""
    from voxtral_pipeline.models import ModelUnavailableError
    from voxtral_pipeline.pipeline import build_transport
    from voxtral_pipeline.server import build_session
    from voxtral_pipeline.transports.daily import DailyError, resolve_room, run_until_joined_then_done

    async def run() -> int:
        try:
            room = await resolve_room(config)
            transport = build_transport(config, room=room)
        except DailyError as e:
            return _fail(str(e), EXIT_BAD_INPUT)
        try:
            models = await asyncio.to_thread(_load_models, config)
        except ModelUnavailableError as e:
            return _fail(str(e), EXIT_RUNTIME)
        voice = build_session(config, transport, models)
        print(f"voxtral-pipeline: joining {room.url}; open it in a browser to talk to the bot", flush=True)
        try:
            report = await run_until_joined_then_done(
                voice, transport, config.transport.daily.join_timeout_secs
            )
        except DailyError as e:
            _fail(str(e), EXIT_RUNTIME)
            # daily-python's native client can hold the process on a lookup that will fail anyway.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(EXIT_RUNTIME)
        if voice.fatal_error is not None:
            return _fail(str(voice.fatal_error), EXIT_RUNTIME)
        print(json.dumps(report["summary"], indent=2))
        return EXIT_OK

    try:
        return asyncio.run(run())
    except KeyboardInterrupt:
        return _fail("interrupted", EXIT_RUNTIME)


def devices_command(_args: argparse.Namespace) -> int:
    """List the audio devices the local transport can use."""
    from voxtral_pipeline.transports.local import LocalAudioError, list_devices

    try:
        found = list_devices()
    except LocalAudioError as e:
        return _fail(str(e), EXIT_BAD_INPUT)
    if not found:
        print("no audio devices found")
    for device in found:
        print(device)
    return EXIT_OK


def _file_summary(config, report: dict[str, Any]) -> int:
    """A finished file run (its files are written): the summary, or that no speech was heard."""
    summary = report["summary"]
    if summary["turns"] == 0:
        print(f"no speech was heard in {config.transport.file.input}: zero turns")
        return EXIT_OK
    print(json.dumps(summary, indent=2))
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    from voxtral_pipeline.file_run import Interrupted, Stopper, exit_code

    # Ctrl-C and SIGTERM are handled from the first line: the imports below take seconds.
    stopper = Stopper()
    stopper.install()
    try:
        return _main(argv, stopper)
    except Interrupted as e:
        print(f"voxtral-pipeline: interrupted ({e}) before the session ran", file=sys.stderr)
        return exit_code(e.signum)
    finally:
        stopper.uninstall()


def _main(argv: list[str] | None, stopper) -> int:
    parser = argparse.ArgumentParser(
        prog="voxtral-pipeline",
        description="Speech-to-speech voice agents: Voxtral hears and answers, Kokoro speaks.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _add_run_parser(sub)
    devices = sub.add_parser("devices", help="list audio devices for --transport local")
    devices.add_argument("--log-level", default="WARNING", help="loguru level (default WARNING)")
    from voxtral_pipeline.bench import add_bench_parser

    add_bench_parser(sub)
    args = parser.parse_args(argv)
    _setup_logging(args.log_level)
    if args.command == "run":
        return run_command(args, stopper)
    stopper.uninstall()  # the other commands keep Python's own Ctrl-C
    if args.command == "devices":
        return devices_command(args)
    if args.command == "bench":
        from voxtral_pipeline.bench import bench_command

        return bench_command(args)
    return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
