"""What the benchmarks' command lines share: the models they load, quiet logs, the JSON they write.

Each benchmark keeps its own options and figures; these are the parts that must not drift apart
between them (the same defaults, the same results file naming).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from loguru import logger


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """``--model``, ``--tts-model``, ``--device`` (dummy weights on the CPU unless told otherwise) and
    ``--out`` (the results file; :func:`write_results` names one when it is not given)."""
    parser.add_argument("--model", default="dummy:tiny")
    parser.add_argument("--tts-model", default="dummy:tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=None)


def warnings_only() -> None:
    """Log only warnings and errors to stderr, so the progress lines and the table stay readable."""
    logger.remove()
    logger.add(sys.stderr, level="WARNING")


def write_results(results: dict[str, Any], folder: Path, benchmark: str, args: argparse.Namespace) -> Path:
    """Write ``results`` as JSON to ``args.out``, else to ``folder/BENCHMARK-MODEL-DEVICE-TIME.json``
    (``args`` as :func:`add_common_args` parses them).

    The default name says what ran (the model spec's ``:`` made file-safe) and when (to the
    second), so results pile up instead of replacing each other. Prints and returns the path.
    """
    name = f"{benchmark}-{args.model.replace(':', '-')}-{args.device}"
    out = args.out or folder / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"results: {out}")
    return out
