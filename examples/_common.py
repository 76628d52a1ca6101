"""Shared argument handling for the example bots (not an example itself)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from voxtral_pipeline.config import PipelineConfig, load_config


def model_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--config", "-c", help="TOML/YAML/JSON config file")
    parser.add_argument(
        "--model", "-m", help="Voxtral model (default mistralai/Voxtral-Mini-3B-2507; dummy:tiny offline)"
    )
    parser.add_argument("--tts-model", help="Kokoro model (default hexgrad/Kokoro-82M; dummy:tiny offline)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any config key")
    return parser


def config_from(args: argparse.Namespace | None, **overrides: Any) -> PipelineConfig:
    """The config from ``model_args``' arguments (None: the file-less default and the environment)."""
    if args is None:
        return load_config(None, overrides)
    values: dict[str, Any] = {"voxtral.model": args.model, "kokoro.model": args.tts_model, **overrides}
    for item in args.set:
        key, _, value = item.partition("=")
        values[key.strip()] = value
    return load_config(args.config, values)


async def bot(runner_args) -> None:
    """pipecat's runner entry point: one session on the transport the runner made (models loaded once)."""
    from voxtral_pipeline.runner import run_bot

    cli = getattr(runner_args, "cli_args", None)
    await run_bot(runner_args, config_from(cli if cli is not None and hasattr(cli, "set") else None))


def pipecat_runner_requested() -> bool:
    """With ``--pipecat-runner``, run pipecat's development runner on the example's ``bot()`` and exit."""
    if "--pipecat-runner" not in sys.argv:
        return False
    from pipecat.runner.run import main as pipecat_runner

    sys.argv.remove("--pipecat-runner")
    pipecat_runner(model_args(argparse.ArgumentParser(description="pipecat's runner with the Voxtral bot")))
    return True
