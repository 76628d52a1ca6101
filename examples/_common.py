"""Shared argument handling for the example bots (not an example itself)."""

from __future__ import annotations

import argparse
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
