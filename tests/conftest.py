"""Shared test set-up: offline, CPU, quiet logs."""

import os
import sys

import pytest
from loguru import logger

# Tests never reach the network; make the HuggingFace libraries fail fast instead of retrying.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _current_stderr(message) -> None:
    sys.stderr.write(message)


@pytest.fixture(autouse=True)
def _log_to_the_current_stderr():
    """After each test, one INFO sink that writes to whatever ``sys.stderr`` is at the time.

    Tests that run the CLI (or import kokoro, which replaces loguru's sinks) left sinks bound to
    that test's captured stderr; once pytest closed it, every later log line printed "Logging
    error in Loguru Handler ... I/O operation on closed file" into other tests' output.
    """
    yield
    logger.remove()
    logger.add(_current_stderr, level="INFO")
