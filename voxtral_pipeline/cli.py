"""``voxtral-pipeline`` command line: run a voice agent from a config file and flags."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from loguru import logger

EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_BAD_INPUT = 2


def _add_run_parser(sub) -> None:
    p = sub.add_parser("run", help="run a voice agent", description="Run a voice agent.")
    p.add_argument("--config", "-c", type=Path, help="TOML (or YAML/JSON) config file")
    p.add_argument("--transport", "-t", help="transport: file")
    p.add_argument("--input", "-i", help="file transport: input WAV")
    p.add_argument("--output", "-o", help="file transport: stereo WAV to write (user left, bot right)")
    p.add_argument("--report", "-r", help="file transport: JSON report to write")
    p.add_argument("--model", "-m", help="Voxtral model: hub id, local dir, dummy:tiny or dummy:full")
    p.add_argument("--tts-model", help="Kokoro model: hub id, local dir, dummy:tiny or dummy:full")
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
    out: dict[str, Any] = {
        "transport.kind": args.transport,
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


# pipecat logs a stage whose setup() failed twice at ERROR level; the CLI says it once, clearly.
_REPEATED_SETUP_ERRORS = ("Error setting up processor", "can no longer do its job")


def _not_repeated_setup_error(record) -> bool:
    return not (
        record["name"].startswith("pipecat")
        and record["level"].name == "ERROR"
        and any(s in record["message"] for s in _REPEATED_SETUP_ERRORS)
    )


def _setup_logging(level: str) -> None:
    logger.remove()
    try:
        logger.add(sys.stderr, level=level.upper(), filter=_not_repeated_setup_error)
    except ValueError:
        logger.add(sys.stderr, level="INFO")
        logger.warning(f"unknown log level {level!r}, using INFO")


def _fail(message: str, code: int) -> int:
    print(f"voxtral-pipeline: error: {message}", file=sys.stderr)
    return code


def run_command(args: argparse.Namespace) -> int:
    """Validate everything cheap first, so bad input fails in one line before any model loads."""
    from voxtral_pipeline.config import ConfigError, load_config
    from voxtral_pipeline.models import ModelUnavailableError, parse_model_spec

    try:
        config = load_config(args.config, _overrides(args))
        parse_model_spec(config.voxtral.model, "Voxtral")
        parse_model_spec(config.kokoro.model, "Kokoro")
    except (ConfigError, ValueError, ModelUnavailableError) as e:
        return _fail(str(e), EXIT_BAD_INPUT)

    from voxtral_pipeline.pipeline import build_pipeline, build_transport
    from voxtral_pipeline.transports.file import AudioInputError

    try:
        transport = build_transport(config)
    except AudioInputError as e:
        return _fail(str(e), EXIT_BAD_INPUT)

    voice = build_pipeline(config, transport)
    try:
        report = asyncio.run(voice.run())
    except KeyboardInterrupt:
        return _fail("interrupted", EXIT_RUNTIME)
    error = voice.fatal_error
    if error is not None:
        return _fail(str(error), EXIT_RUNTIME)
    return _finish_file_session(config, transport, report)


def _finish_file_session(config, transport, report: dict[str, Any]) -> int:
    file_cfg = config.transport.file
    if file_cfg.output:
        path = transport.write_recording(file_cfg.output)
        logger.info(f"wrote {path} (left: user, right: bot)")
    if file_cfg.report:
        path = Path(file_cfg.report)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        logger.info(f"wrote {path}")
    summary = report["summary"]
    if summary["turns"] == 0:
        print(f"no speech was heard in {file_cfg.input}: zero turns")
        return EXIT_OK
    print(json.dumps(summary, indent=2))
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="voxtral-pipeline",
        description="Speech-to-speech voice agents: Voxtral hears and answers, Kokoro speaks.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _add_run_parser(sub)
    args = parser.parse_args(argv)
    _setup_logging(args.log_level)
    if args.command == "run":
        return run_command(args)
    return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
