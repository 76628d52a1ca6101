"""Load Voxtral (processor + model) from a hub id, a local directory, or random dummy weights.

Every spec goes through transformers' real classes: ``VoxtralProcessor`` (Whisper mel features +
``MistralCommonBackend`` on ``tekken.json``) and ``VoxtralForConditionalGeneration``.

* ``mistralai/Voxtral-Mini-3B-2507`` (any hub id): the local HuggingFace cache first, then the hub
  (with its progress bars). Offline and not cached gives a one-sentence ``ModelUnavailableError``
  at once, instead of the hub client's minutes of retries.
* a local directory: the same ``from_pretrained`` calls on the path.
* ``dummy:tiny``: a 0.3 M-parameter Voxtral with a byte-level tokenizer, saved once to the cache
  directory and then loaded with the same ``from_pretrained`` calls as a real checkpoint.
* ``dummy:full``: the real 3B architecture (4.68 B parameters, 131072-id vocab) with random weights,
  built straight on the target device in the target dtype (never written to disk): real-size
  timings on a GPU without the real weights.

Random models babble control tokens; the dummies' generation configs suppress them so the output
is visible text. They say nonsense: tests check mechanics and timing, never wording.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import io
import json
import os
import shutil
import tempfile
import threading
import wave
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from loguru import logger
from transformers.generation import BaseStreamer

from voxtral_pipeline.audio import pcm16_to_float, resample, wav_bytes
from voxtral_pipeline.models import (
    ModelUnavailableError,
    dummy_cache_dir,
    hub_reachable,
    offline_message,
    parse_model_spec,
    resolve_device,
)
from voxtral_pipeline.models.tekken import (
    AUDIO_TOKEN_ID,
    BOS_TOKEN_ID,
    EOS_TOKEN_ID,
    NUM_SPECIAL_TOKENS,
    PAD_TOKEN_ID,
    TEKKEN_FILENAME,
    TOOL_CALL_TOKEN_IDS,
    TekkenKind,
    byte_token_id,
    vocab_size,
    write_tekken,
)

DEFAULT_MODEL_ID = "mistralai/Voxtral-Mini-3B-2507"
MODEL_FLAG = "--model"
SAMPLE_RATE = 16000
#: Audio tokens per 30-s chunk: every utterance is zero-padded to a multiple of 30 s.
AUDIO_TOKENS_PER_CHUNK = 375
#: Bumped whenever the dummy recipe changes, so stale cached checkpoints are rebuilt.
DUMMY_RECIPE_VERSION = 1
#: Bytes the tiny dummy may emit: lower-case letters, space, comma, period (and EOS).
TINY_VISIBLE_CHARS = "abcdefghijklmnopqrstuvwxyz ,."

_DUMMY_MARKER = "voxtral-pipeline-dummy.json"
_DUMMY_BUILD_LOCK = threading.Lock()


@dataclass
class VoxtralBundle:
    """A loaded Voxtral: what the stage needs to tokenize, generate and decode.

    Parameters:
        processor: ``VoxtralProcessor`` (mel features + Mistral tokenizer).
        model: ``VoxtralForConditionalGeneration`` in eval mode on ``device``.
        device: Torch device string the model lives on.
        dtype: Dtype of the model's weights.
        spec: The model spec it was loaded from.
        is_dummy: True for random weights (``dummy:tiny`` / ``dummy:full``).
    """

    processor: Any
    model: Any
    device: str
    dtype: torch.dtype
    spec: str
    is_dummy: bool
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @property
    def tokenizer(self) -> Any:
        """The ``MistralCommonBackend`` tokenizer."""
        return self.processor.tokenizer

    @property
    def eos_token_id(self) -> int:
        return int(self.tokenizer.eos_token_id)

    @property
    def lock(self) -> threading.Lock:
        """Held around each ``generate`` so a bundle shared by several stages runs one at a time."""
        return self._lock

    def prepare_inputs(self, conversation: list[dict[str, Any]]) -> Any:
        """Tokenize a conversation and compute its mel features, on the model's device and dtype."""
        inputs = self.processor.apply_chat_template(conversation)
        return inputs.to(self.device, dtype=self.dtype)

    def decode(self, token_ids: Sequence[int] | torch.Tensor) -> str:
        """Visible text of generated ids (control tokens dropped)."""
        if isinstance(token_ids, torch.Tensor):
            token_ids = token_ids.tolist()
        return self.tokenizer.decode(list(token_ids), skip_special_tokens=True)


# ----------------------------------------------------------------------------------------------
# Conversation helpers
# ----------------------------------------------------------------------------------------------


def audio_content_part(audio: np.ndarray | bytes, sample_rate: int = SAMPLE_RATE) -> dict[str, Any]:
    """Audio as a chat-template content part: ``{"type": "audio", "base64": <WAV>}``.

    ``MistralCommonBackend`` takes audio as a base64 file (or a path/URL), not as an array. ``audio``
    is float32 samples, or 16-bit mono PCM bytes; anything not at 16 kHz is resampled first.
    """
    if isinstance(audio, (bytes, bytearray, memoryview)):
        if sample_rate == SAMPLE_RATE:
            return {"type": "audio", "base64": base64.b64encode(_pcm16_wav(bytes(audio))).decode("ascii")}
        audio = pcm16_to_float(bytes(audio))
    samples = resample(np.asarray(audio, dtype=np.float32).reshape(-1), sample_rate, SAMPLE_RATE)
    return {"type": "audio", "base64": base64.b64encode(wav_bytes(samples, SAMPLE_RATE)).decode("ascii")}


def _pcm16_wav(pcm: bytes) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(pcm)
    return buf.getvalue()


@dataclass
class ConversationTurn:
    """One turn of a voice conversation.

    Parameters:
        role: ``user`` (heard as audio), ``assistant`` (what the bot answered, as text, and the
            function calls it made) or ``tool`` (a function's result).
        text: The assistant's text or the tool's result; for a user turn, optional text after the audio.
        audio: A user turn's audio as a content part (see :func:`audio_content_part`), encoded once.
        tool_calls: An assistant turn's function calls, in OpenAI chat format.
        tool_call_id: A tool turn's call id.
        name: A tool turn's function name.
    """

    role: Literal["user", "assistant", "tool"]
    text: str = ""
    audio: dict[str, Any] | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    name: str | None = None


def build_conversation(
    turns: Sequence[ConversationTurn], instructions: str | None = None
) -> list[dict[str, Any]]:
    """Chat messages for ``apply_chat_template``.

    Instructions go as a text part of the first user turn: Voxtral takes no system prompt with audio
    (mistral-common's v7 validator rejects it). Assistant turns with no text and no function call
    (an answer interrupted before its first word) are left out, since the validator rejects empty
    assistant messages. Function calls and results use the OpenAI chat format, which both
    ``MistralCommonBackend.apply_chat_template`` and vLLM take.
    """
    messages: list[dict[str, Any]] = []
    first_user = True
    for turn in turns:
        if turn.role == "assistant":
            if turn.tool_calls:
                messages.append({"role": "assistant", "content": turn.text, "tool_calls": turn.tool_calls})
            elif turn.text:
                messages.append({"role": "assistant", "content": turn.text})
            continue
        if turn.role == "tool":
            messages.append(
                {"role": "tool", "tool_call_id": turn.tool_call_id, "name": turn.name, "content": turn.text}
            )
            continue
        content: list[dict[str, Any]] = []
        if turn.audio is not None:
            content.append(turn.audio)
        text = turn.text
        if first_user and instructions:
            text = f"{instructions}\n\n{text}" if text else instructions
        if text:
            content.append({"type": "text", "text": text})
        first_user = False
        if content:
            messages.append({"role": "user", "content": content})
    return messages


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeviceProperties:
    """What dtype and attention choices depend on, so both are pure functions of it (and testable).

    Parameters:
        type: ``cpu`` or ``cuda`` (anything else is treated like the CPU).
        compute_capability: CUDA ``(major, minor)``; None off CUDA.
    """

    type: str
    compute_capability: tuple[int, int] | None = None

    @classmethod
    def of(cls, device: str) -> DeviceProperties:
        if not device.startswith("cuda"):
            return cls(type=device.split(":")[0])
        index = torch.device(device).index
        major, minor = torch.cuda.get_device_capability(
            index if index is not None else torch.cuda.current_device()
        )
        return cls(type="cuda", compute_capability=(major, minor))

    @property
    def native_bf16(self) -> bool:
        """bf16 tensor cores: Ampere (8.0) and later. Older GPUs only emulate bf16, slowly."""
        return self.compute_capability is not None and self.compute_capability >= (8, 0)


def choose_dtype(requested: str, props: DeviceProperties) -> torch.dtype:
    """``auto``: bf16 on GPUs that support it natively, fp16 on older GPUs, fp32 on CPUs.

    bf16 matmuls are slow on CPUs, and on pre-Ampere GPUs (T4, V100) torch emulates them.
    """
    if requested == "auto":
        if props.type != "cuda":
            return torch.float32
        return torch.bfloat16 if props.native_bf16 else torch.float16
    if requested not in ("bfloat16", "float16", "float32"):
        raise ValueError(f"unknown dtype {requested!r}: use auto, bfloat16, float16 or float32")
    return getattr(torch, requested)


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    """:func:`choose_dtype` for a device string (asks CUDA for its compute capability)."""
    return choose_dtype(dtype, DeviceProperties.of(device) if dtype == "auto" else DeviceProperties("cpu"))


def load_voxtral(
    spec: str = DEFAULT_MODEL_ID,
    device: str = "auto",
    dtype: str = "auto",
    seed: int | None = None,
    *,
    cache_dir: str | Path | None = None,
    attn_implementation: str = "auto",
) -> VoxtralBundle:
    """Load Voxtral from a hub id, a local directory, or ``dummy:tiny`` / ``dummy:full``.

    Args:
        spec: Hub id, local directory, or dummy spec.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        dtype: ``auto`` (bf16 on GPUs with native bf16, fp16 on older GPUs, fp32 on CPU),
            ``bfloat16``, ``float16`` or ``float32``.
        seed: Seed of the dummies' random weights (default 0); ignored for real weights.
        cache_dir: Where dummy checkpoints are kept (default ``$VOXTRAL_PIPELINE_CACHE/dummy``, else
            ``~/.cache/voxtral-pipeline/dummy``).
        attn_implementation: ``auto`` (flash_attention_2 where it can run: flash-attn imports,
            fp16/bf16, compute capability >= 8.0; else sdpa), ``sdpa``, ``flash_attention_2`` or
            ``eager``.

    Raises:
        ModelUnavailableError: with a one-sentence message when the model cannot be had.
    """
    parsed = parse_model_spec(spec, "Voxtral")
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    attn = resolve_attn_implementation(attn_implementation, dev, torch_dtype)
    if parsed.kind == "dummy":
        seed = 0 if seed is None else seed
        if parsed.value == "tiny":
            path = dummy_tiny_dir(seed, cache_dir)
            processor, model = _load_cached_dummy(path, seed, dev, torch_dtype, attn)
        else:
            processor, model = _build_full_dummy(seed, dev, torch_dtype, cache_dir, attn)
    elif parsed.kind == "local":
        processor, model = _load_local(parsed.value, dev, torch_dtype, attn)
    else:
        processor, model = _load_hub(parsed.value, dev, torch_dtype, attn)
    model.eval()
    logger.info(
        f"Voxtral {spec} loaded on {dev} ({str(torch_dtype).removeprefix('torch.')}, {attn}, "
        f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f} M params)"
    )
    return VoxtralBundle(
        processor=processor, model=model, device=dev, dtype=torch_dtype, spec=spec, is_dummy=parsed.is_dummy
    )


def choose_attn_implementation(
    requested: str, props: DeviceProperties, dtype: torch.dtype, flash_attn_usable: bool
) -> str:
    """``auto``: flash_attention_2 only where it can run, else sdpa.

    flash-attn needs the package to import, fp16/bf16 weights and an Ampere or newer GPU
    (compute capability >= 8.0); anywhere else transformers accepts the choice and the first
    forward fails. An explicit choice is kept as is.
    """
    if requested != "auto":
        return requested
    if (
        flash_attn_usable
        and props.type == "cuda"
        and dtype in (torch.float16, torch.bfloat16)
        and props.compute_capability is not None
        and props.compute_capability >= (8, 0)
    ):
        return "flash_attention_2"
    return "sdpa"


def flash_attn_importable() -> bool:
    """True when ``flash_attn`` imports: a wheel built for another torch/CUDA raises at import
    (ImportError, OSError on a missing .so, RuntimeError), which means sdpa, not a crash."""
    if importlib.util.find_spec("flash_attn") is None:
        return False
    try:
        import flash_attn  # noqa: F401
    except Exception as e:
        logger.warning(f"flash-attn is installed but does not import ({type(e).__name__}: {e}); using sdpa")
        return False
    return True


def resolve_attn_implementation(name: str, device: str, dtype: torch.dtype = torch.float32) -> str:
    """:func:`choose_attn_implementation` for a device string (imports flash-attn only on CUDA)."""
    if name != "auto" or not device.startswith("cuda"):
        return choose_attn_implementation(name, DeviceProperties("cpu"), dtype, False)
    return choose_attn_implementation(name, DeviceProperties.of(device), dtype, flash_attn_importable())


def _from_pretrained(
    source: str, device: str, dtype: torch.dtype, attn: str = "sdpa", **kwargs: Any
) -> tuple[Any, Any]:
    """The one place real checkpoints are loaded, for hub ids, directories and the tiny dummy alike."""
    from transformers import AutoProcessor, VoxtralForConditionalGeneration

    processor = AutoProcessor.from_pretrained(source, **kwargs)
    kwargs["attn_implementation"] = attn
    if device != "cpu" and importlib.util.find_spec("accelerate") is not None:
        model = VoxtralForConditionalGeneration.from_pretrained(
            source, dtype=dtype, device_map=device, **kwargs
        )
    else:  # without accelerate, transformers refuses device_map: load on the CPU, then move
        model = VoxtralForConditionalGeneration.from_pretrained(source, dtype=dtype, **kwargs).to(device)
    return processor, model


def _load_local(path: str, device: str, dtype: torch.dtype, attn: str = "sdpa") -> tuple[Any, Any]:
    try:
        return _from_pretrained(path, device, dtype, attn, local_files_only=True)
    except (OSError, ValueError) as e:
        raise ModelUnavailableError(
            f"cannot load Voxtral model from directory {path}: {_first_line(e)}"
        ) from e


#: What transformers loads from a Voxtral repo. The hub repo also holds ``consolidated.safetensors``
#: and ``params.json`` (the same weights in Mistral's format, for vLLM): a plain ``hf download``
#: would fetch the 9 GB of weights twice.
HUB_FILES = ("*.json", "model*.safetensors")
#: Files without which a cached snapshot cannot load (the weights are named in the index).
_REQUIRED_HUB_FILES = ("config.json", TEKKEN_FILENAME)


def _missing_cached_files(model_id: str) -> list[str]:
    """Required files absent from the local cache's snapshot (all of them when there is none)."""
    from huggingface_hub import try_to_load_from_cache

    return [
        name for name in _REQUIRED_HUB_FILES if not isinstance(try_to_load_from_cache(model_id, name), str)
    ]


def _load_hub(model_id: str, device: str, dtype: torch.dtype, attn: str = "sdpa") -> tuple[Any, Any]:
    """The local cache first; the hub only when it answers a quick probe (its client retries for minutes).

    A partly cached snapshot (an interrupted download: ``config.json`` there, ``tekken.json`` not)
    fails the cache-only load with a ValueError from the tokenizer, not an OSError: it is resumed
    from the hub like a missing one, or named in one sentence when the hub cannot be reached.
    """
    try:
        return _from_pretrained(model_id, device, dtype, attn, local_files_only=True)
    except (OSError, ValueError) as e:
        logger.debug(f"Voxtral {model_id} not (fully) cached: {_first_line(e)}")
    missing = _missing_cached_files(model_id)
    partial = 0 < len(missing) < len(_REQUIRED_HUB_FILES)
    if not hub_reachable():
        if partial:
            command = f"hf download {model_id}" + "".join(f" --include '{p}'" for p in HUB_FILES)
            raise ModelUnavailableError(
                f"Voxtral model {model_id!r} is only partly in the local HuggingFace cache "
                f"({', '.join(missing)} missing: an interrupted download?) and the hub cannot be reached: "
                f"finish the download on a connected machine "
                f"(`{command}`), "
                f"or point {MODEL_FLAG} at a local directory holding the whole model"
            )
        raise ModelUnavailableError(offline_message("Voxtral", model_id, MODEL_FLAG, HUB_FILES))
    logger.info(
        f"Downloading Voxtral {model_id} from the hub" + (" (resuming)" if partial else " (first run)")
    )
    try:
        return _from_pretrained(model_id, device, dtype, attn)
    except (OSError, ValueError) as e:
        raise ModelUnavailableError(
            f"cannot download Voxtral model {model_id!r} from the hub: {_first_line(e)}"
        ) from e


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


# ----------------------------------------------------------------------------------------------
# Dummy models
# ----------------------------------------------------------------------------------------------


def dummy_voxtral_config(size: Literal["tiny", "full"]) -> Any:
    """``VoxtralConfig`` of a dummy: tiny sizes, or the defaults (which mirror Voxtral-Mini-3B)."""
    from transformers import VoxtralConfig, VoxtralEncoderConfig

    ids = {"bos_token_id": BOS_TOKEN_ID, "eos_token_id": EOS_TOKEN_ID, "pad_token_id": PAD_TOKEN_ID}
    if size == "full":
        return VoxtralConfig(audio_token_id=AUDIO_TOKEN_ID, text_config={"model_type": "llama", **ids})
    # The processor always feeds 3000 mel frames of 128 bins per 30-s chunk (max_source_positions
    # 1500 after the stride-2 conv), and the projector folds 4 encoder frames into one embedding
    # (intermediate = 4 x hidden) to give the 375 audio embeddings the [AUDIO] tokens expect.
    audio = VoxtralEncoderConfig(
        hidden_size=32,
        intermediate_size=128,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_mel_bins=128,
        max_source_positions=1500,
    )
    # A dict text_config is merged over the 3B defaults, so every size that differs is explicit.
    text = {
        "model_type": "llama",
        "vocab_size": vocab_size("tiny"),
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "max_position_embeddings": 32768,
        "rope_theta": 1e8,
        "rms_norm_eps": 1e-5,
        **ids,
    }
    return VoxtralConfig(audio_config=audio, text_config=text, audio_token_id=AUDIO_TOKEN_ID)


def kv_bytes_per_token(text_config: Any, dtype: torch.dtype) -> int:
    """KV-cache bytes per token of context: K and V of every layer's KV heads.

    With ``static_cache`` each session preallocates ``kv_cache_max_tokens`` of these
    (docs/deployment.md): 120 KiB x 16384 = 1.88 GiB per session for Voxtral-Mini-3B in bf16.
    """
    head_dim = (
        getattr(text_config, "head_dim", None) or text_config.hidden_size // text_config.num_attention_heads
    )
    layers, kv_heads = text_config.num_hidden_layers, text_config.num_key_value_heads
    return 2 * layers * kv_heads * head_dim * torch.empty((), dtype=dtype).element_size()


def dummy_suppressed_tokens(kind: TekkenKind) -> list[int]:
    """Ids a dummy may not emit, so a random model's output is visible text.

    tiny: everything but EOS and the bytes of :data:`TINY_VISIBLE_CHARS`; full: the control ids
    except EOS.
    """
    if kind == "tiny":
        allowed = {EOS_TOKEN_ID} | {byte_token_id(b) for b in TINY_VISIBLE_CHARS.encode("ascii")}
        return [i for i in range(vocab_size("tiny")) if i not in allowed]
    return [i for i in range(NUM_SPECIAL_TOKENS) if i != EOS_TOKEN_ID]


def _dummy_generation_config(kind: TekkenKind) -> Any:
    from transformers import GenerationConfig

    return GenerationConfig(
        bos_token_id=BOS_TOKEN_ID,
        eos_token_id=EOS_TOKEN_ID,
        pad_token_id=PAD_TOKEN_ID,
        suppress_tokens=dummy_suppressed_tokens(kind),
    )


def _build_processor(tekken_dir: Path) -> Any:
    from transformers import MistralCommonBackend, VoxtralProcessor, WhisperFeatureExtractor

    feature_extractor = WhisperFeatureExtractor(
        feature_size=128,
        sampling_rate=SAMPLE_RATE,
        hop_length=160,
        chunk_length=30,
        n_fft=400,
        padding_value=0.0,
        return_attention_mask=False,
    )
    tokenizer = MistralCommonBackend(tokenizer_path=str(tekken_dir / TEKKEN_FILENAME))
    return VoxtralProcessor(feature_extractor=feature_extractor, tokenizer=tokenizer)


def _dummy_root(cache_dir: str | Path | None) -> Path:
    return Path(cache_dir).expanduser() if cache_dir is not None else dummy_cache_dir()


def _recipe_key(size: str, seed: int) -> dict[str, Any]:
    import transformers

    return {
        "size": size,
        "seed": seed,
        "recipe": DUMMY_RECIPE_VERSION,
        "transformers": transformers.__version__,
        "torch": torch.__version__.split("+")[0],
    }


def dummy_tiny_dir(seed: int = 0, cache_dir: str | Path | None = None) -> Path:
    """Directory of the cached ``dummy:tiny`` checkpoint for a seed (may not exist yet)."""
    key = json.dumps(_recipe_key("tiny", seed), sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:10]
    return _dummy_root(cache_dir) / f"voxtral-tiny-seed{seed}-{digest}"


def build_dummy_tiny(directory: str | Path, seed: int = 0) -> Path:
    """Write a ``dummy:tiny`` checkpoint (config, weights, generation config, processor, tekken.json).

    The folder loads with ``AutoProcessor.from_pretrained`` and
    ``VoxtralForConditionalGeneration.from_pretrained``, like a real one.
    """
    from transformers import VoxtralForConditionalGeneration

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    write_tekken(directory, "tiny")
    processor = _build_processor(directory)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = VoxtralForConditionalGeneration(dummy_voxtral_config("tiny"))
    model.generation_config = _dummy_generation_config("tiny")
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    (directory / _DUMMY_MARKER).write_text(json.dumps(_recipe_key("tiny", seed), sort_keys=True))
    return directory


def _load_cached_dummy(
    path: Path, seed: int, device: str, dtype: torch.dtype, attn: str = "sdpa"
) -> tuple[Any, Any]:
    """Load the cached tiny checkpoint, building it first if it is missing or unreadable."""
    with _DUMMY_BUILD_LOCK:
        if (path / _DUMMY_MARKER).is_file():
            try:
                return _from_pretrained(str(path), device, dtype, attn, local_files_only=True)
            except Exception as e:  # a corrupt cache is rebuilt, whatever broke in it
                logger.warning(
                    f"cached Voxtral dummy at {path} is unreadable ({_first_line(e)}); rebuilding it"
                )
        _build_atomically(path, seed)
        return _from_pretrained(str(path), device, dtype, attn, local_files_only=True)


def _build_atomically(path: Path, seed: int) -> None:
    """Build into a temporary sibling and rename, so concurrent runs never see half a checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    try:
        logger.info(f"Building Voxtral dummy:tiny (seed {seed}) in {path}")
        build_dummy_tiny(tmp, seed)
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache is readable like any other
        if path.exists():
            shutil.rmtree(path, ignore_errors=True)
        try:
            os.replace(tmp, path)
        except OSError:
            if not (path / _DUMMY_MARKER).is_file():  # not a concurrent build that won the race
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _build_full_dummy(
    seed: int, device: str, dtype: torch.dtype, cache_dir: str | Path | None, attn: str = "sdpa"
) -> tuple[Any, Any]:
    """The real 3B architecture with random weights, made on the device in the dtype (~9 GiB in bf16).

    Writing 9 GiB of random weights to disk to load them back would only cost time; the tokenizer
    file is small and cached, so the processor still loads from a directory.
    """
    from transformers import VoxtralForConditionalGeneration

    tekken_dir = _dummy_root(cache_dir) / f"voxtral-full-tokenizer-r{DUMMY_RECIPE_VERSION}"
    with _DUMMY_BUILD_LOCK:
        if not (tekken_dir / TEKKEN_FILENAME).is_file():
            write_tekken(tekken_dir, "full")
        processor = _build_processor(tekken_dir)
    config = dummy_voxtral_config("full")
    logger.info(f"Building Voxtral dummy:full (random weights, seed {seed}) on {device}")
    torch.manual_seed(seed)  # seeds the CUDA generators too
    with torch.device(device):
        model = VoxtralForConditionalGeneration._from_config(config, dtype=dtype, attn_implementation=attn)
    # from_pretrained keeps these in float32 (``_keep_in_fp32_modules_strict``); do the same.
    for name in getattr(model, "_keep_in_fp32_modules_strict", None) or []:
        for module_name, module in model.named_modules():
            if module_name.endswith(name):
                module.float()
    model.generation_config = _dummy_generation_config("full")
    return processor, model


# ----------------------------------------------------------------------------------------------
# Streaming generation
# ----------------------------------------------------------------------------------------------


class TokenStreamer(BaseStreamer):
    """Hands ``generate()``'s text out token by token, for a real time to first token.

    ``TextIteratorStreamer`` holds text back to word boundaries and queues empty items; this one
    calls ``on_delta(text, n_tokens)`` once per generated token with the text that token completed.
    A token ending inside a multi-byte UTF-8 character hands out only the whole characters before
    it; the rest follows once the character is whole, however many tokens that takes (a BPE token
    can end one character and begin the next). The prompt, which ``generate()`` pushes first, is
    skipped.

    Control tokens are dropped from the text, except those of a function call (``[TOOL_CALLS]``,
    ``[ARGS]``, ``[CALL_ID]``), which are handed out whole as their string, so the stage can hold a
    call back from the speech and parse it (the way vLLM's Mistral tool parser reads them).
    """

    #: Tokens that each end inside a character (a BPE token can end one character's bytes and
    #: begin the next one's, so such a run has no fixed length): past this many the run is
    #: handed out as it decodes. Only undecodable bytes get that far.
    MAX_HELD_TOKENS = 64

    def __init__(self, tokenizer: Any, on_delta: Callable[[str, int], None]):
        self._tokenizer = tokenizer
        self._on_delta = on_delta
        self._prompt_seen = False
        self._held: list[int] = []
        self._sent = 0  # characters of the held run's text already handed out
        self._markers = tool_call_token_ids(tokenizer)
        self.token_ids: list[int] = []

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=True)

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        if value.dim() > 1 and value.shape[0] > 1:
            raise ValueError("TokenStreamer only supports batch size 1")
        for token_id in value.reshape(-1).tolist():
            self.token_ids.append(token_id)
            marker = self._markers.get(token_id)
            if marker is not None:
                self.end()  # whatever was held is complete: nothing continues it across a control token
                self._on_delta(marker, 1)
                continue
            self._held.append(token_id)
            text = self._decode(self._held)
            if text.endswith("\ufffd") and len(self._held) < self.MAX_HELD_TOKENS:
                # The run ends inside a character: hand out the whole characters before it only.
                stable = text.rstrip("\ufffd")
                delta, self._sent = stable[self._sent :], max(self._sent, len(stable))
                self._on_delta(delta, 1)
                continue
            delta = text[self._sent :]
            self._held, self._sent = [], 0
            self._on_delta(delta, 1)

    def end(self) -> None:
        """Flush a held tail (an incomplete character at the very end decodes to U+FFFD)."""
        if self._held:
            text = self._decode(self._held)[self._sent :]
            self._held, self._sent = [], 0
            if text:
                self._on_delta(text, 0)


def tool_call_token_ids(tokenizer: Any) -> dict[int, str]:
    """Ids of the function-call control tokens in this tokenizer (Voxtral's ids when it cannot say)."""
    cached = getattr(tokenizer, "_voxtral_tool_call_ids", None)
    if cached is not None:
        return cached
    ids: dict[int, str] = {}
    for default_id, token in TOOL_CALL_TOKEN_IDS.items():
        try:
            found = tokenizer.convert_tokens_to_ids(token)
        except Exception:
            found = None
        ids[found if isinstance(found, int) and found >= 0 else default_id] = token
    try:
        tokenizer._voxtral_tool_call_ids = ids
    except Exception:
        pass
    return ids


def sampling_kwargs(temperature: float, top_p: float) -> dict[str, Any]:
    """``generate()`` sampling arguments: temperature 0 means greedy decoding."""
    if temperature <= 0:
        return {"do_sample": False}
    return {"do_sample": True, "temperature": temperature, "top_p": top_p}
