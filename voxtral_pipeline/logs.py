"""The command line's log sink (shared by ``voxtral-pipeline run`` and ``voxtral-pipeline bench``)."""

from __future__ import annotations

import sys

from loguru import logger

# pipecat logs a stage whose setup() failed twice at ERROR level; the CLI says it once, clearly.
_REPEATED_SETUP_ERRORS = ("Error setting up processor", "can no longer do its job")


def _not_repeated_setup_error(record) -> bool:
    return not (
        record["name"].startswith("pipecat")
        and record["level"].name == "ERROR"
        and any(s in record["message"] for s in _REPEATED_SETUP_ERRORS)
    )


def setup_logging(level: str) -> None:
    logger.remove()
    try:
        logger.add(sys.stderr, level=level.upper(), filter=_not_repeated_setup_error)
    except ValueError:
        logger.add(sys.stderr, level="INFO")
        logger.warning(f"unknown log level {level!r}, using INFO")


def keep_log_level(level: str) -> None:
    """Import the kokoro package now and set our log sink again.

    kokoro replaces loguru's sinks with its own (INFO) when first imported, which would undo
    --log-level once the TTS loads; called once the input is known good, before any model loads.
    """
    try:
        import kokoro  # noqa: F401
    except Exception:  # not installed, or broken: the Kokoro stage reports that itself
        pass
    setup_logging(level)
