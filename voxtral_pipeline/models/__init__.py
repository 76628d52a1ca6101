"""Model specs shared by the Voxtral and Kokoro loaders.

A spec is a hub id (``mistralai/Voxtral-Mini-3B-2507``), a local directory, or ``dummy:tiny`` /
``dummy:full``: the real architecture with random weights and an offline tokenizer, loaded through
the same classes as the real model (vLLM's ``--load-format dummy`` is the precedent).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

DUMMY_SIZES = ("tiny", "full")
HUB_PROBE_TIMEOUT_S = 5.0


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


def offline_message(what: str, model_id: str, flag: str, include: tuple[str, ...] = ()) -> str:
    """The one sentence a user sees when a hub model is neither cached nor downloadable.

    ``include``: the file patterns the loader needs, when the repo holds more (another format's
    weights), so the hint downloads only those.
    """
    command = f"hf download {model_id}" + "".join(f" --include '{p}'" for p in include)
    return (
        f"{what} model {model_id!r} is not in the local HuggingFace cache and the hub cannot be reached: "
        f"download it once on a connected machine (`{command}`), point {flag} at a local "
        f"directory holding it, or use {flag} dummy:tiny for random weights"
    )


def dummy_cache_dir() -> Path:
    """Where built dummy checkpoints are kept: ``$VOXTRAL_PIPELINE_CACHE/dummy`` or ~/.cache."""
    root = os.environ.get("VOXTRAL_PIPELINE_CACHE")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "voxtral-pipeline"
    return base / "dummy"


def hub_reachable(timeout: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """One quick HEAD to the hub endpoint; False in offline mode (``HF_HUB_OFFLINE``).

    ``hf_hub_download`` and ``from_pretrained`` retry for 20 s to minutes before failing on an
    unreachable hub; this probe lets a loader say so at once.
    """
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    flags = (os.environ.get("HF_HUB_OFFLINE", ""), os.environ.get("TRANSFORMERS_OFFLINE", ""))
    if constants.HF_HUB_OFFLINE or any(f.strip().upper() in ("1", "ON", "YES", "TRUE") for f in flags):
        return False
    try:
        get_session().head(constants.ENDPOINT, timeout=timeout)
    except Exception:
        return False
    return True
