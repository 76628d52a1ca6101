"""Model specs shared by the Voxtral and Kokoro loaders.

A spec is a hub id (``mistralai/Voxtral-Mini-3B-2507``), a local directory, or ``dummy:tiny`` /
``dummy:full``: the real architecture with random weights and an offline tokenizer, loaded through
the same classes as the real model (vLLM's ``--load-format dummy`` is the precedent).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

DUMMY_SIZES = ("tiny", "full")


class ModelUnavailableError(Exception):
    """A model that cannot be loaded; the message is one sentence saying what to do."""


@dataclass(frozen=True)
class ModelSpec:
    """A parsed model spec."""

    kind: Literal["hub", "local", "dummy"]
    value: str

    @property
    def is_dummy(self) -> bool:
        return self.kind == "dummy"


def parse_model_spec(spec: str, what: str) -> ModelSpec:
    """Tell a dummy spec, a local directory and a hub id apart.

    Raises:
        ModelUnavailableError: for an unknown dummy size or a path that does not exist.
    """
    spec = spec.strip()
    if spec.startswith("dummy:"):
        size = spec.split(":", 1)[1]
        if size not in DUMMY_SIZES:
            raise ModelUnavailableError(
                f"unknown {what} model spec {spec!r}: "
                "use dummy:tiny or dummy:full, a hub id or a local directory"
            )
        return ModelSpec("dummy", size)
    path = Path(spec).expanduser()
    if path.is_dir():
        return ModelSpec("local", str(path))
    looks_like_path = spec.startswith((".", "/", "~")) or spec.count("/") != 1
    if looks_like_path:
        raise ModelUnavailableError(f"{what} model directory not found: {spec}")
    return ModelSpec("hub", spec)


def resolve_device(device: str) -> str:
    """``auto`` becomes ``cuda`` when a GPU is visible, else ``cpu``."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelUnavailableError(
            f"device {device!r} was asked for but no CUDA GPU is visible; use --device cpu"
        )
    return device


def offline_message(what: str, model_id: str, flag: str) -> str:
    """The one sentence a user sees when a hub model is neither cached nor downloadable."""
    return (
        f"{what} model {model_id!r} is not in the local HuggingFace cache and the hub cannot be reached: "
        f"download it once on a connected machine (`hf download {model_id}`), point {flag} at a local "
        f"directory holding it, or use {flag} dummy:tiny for random weights"
    )
