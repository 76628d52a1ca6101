"""Shared test set-up: offline, CPU, quiet logs."""

import os

# Tests never reach the network; make the HuggingFace libraries fail fast instead of retrying.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
