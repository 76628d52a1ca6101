"""Write an audio-capable Tekken tokenizer file (``tekken.json``) without the hub.

mistral-common ships Tekken vocabularies but none with audio support, and the hub is not always
reachable. Voxtral's processor needs a v7+ file with an ``"audio"`` section and the audio special
tokens at their real ids, so the dummy models write one here:

* ``tiny``: 256 single-byte tokens plus 1000 specials (vocab 1256), for fast tests;
* ``full``: the vocabulary of mistral-common's shipped ``tekken_240911.json`` (131072 ids, the real
  Voxtral size), for real-size timings with random weights.

Only the special-token ids and the audio settings are Voxtral's; the vocabulary of ``full`` is the
public Tekken one, which is what Voxtral's tokenizer is built on.
"""

from __future__ import annotations

import base64
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Literal

TekkenKind = Literal["tiny", "full"]
TEKKEN_KINDS: tuple[str, ...] = ("tiny", "full")
TEKKEN_FILENAME = "tekken.json"  # MistralCommonBackend only accepts this exact name
TEKKEN_VERSION = "v7"  # strictest validator that supports audio: rejects system prompt + audio

NUM_SPECIAL_TOKENS = 1000
NUM_BYTE_TOKENS = 256
TINY_VOCAB_SIZE = NUM_SPECIAL_TOKENS + NUM_BYTE_TOKENS
FULL_VOCAB_SIZE = 131072

BOS_TOKEN_ID = 1
EOS_TOKEN_ID = 2
PAD_TOKEN_ID = 11
AUDIO_TOKEN_ID = 24  # hard-coded in transformers' VoxtralProcessor
BEGIN_AUDIO_TOKEN_ID = 25
TRANSCRIBE_TOKEN_ID = 34
TOOL_CALLS_TOKEN_ID = 9
ARGS_TOKEN_ID = 32
CALL_ID_TOKEN_ID = 33
#: The control tokens of a function call, which the token streamer hands out as their strings.
TOOL_CALL_TOKEN_IDS: dict[int, str] = {
    TOOL_CALLS_TOKEN_ID: "[TOOL_CALLS]",
    ARGS_TOKEN_ID: "[ARGS]",
    CALL_ID_TOKEN_ID: "[CALL_ID]",
}

#: Voxtral's named control tokens by id; every other id below 1000 is ``<SPECIAL_{id}>``.
VOXTRAL_SPECIAL_TOKENS: dict[int, str] = {
    0: "<unk>",
    1: "<s>",
    2: "</s>",
    3: "[INST]",
    4: "[/INST]",
    5: "[AVAILABLE_TOOLS]",
    6: "[/AVAILABLE_TOOLS]",
    7: "[TOOL_RESULTS]",
    8: "[/TOOL_RESULTS]",
    9: "[TOOL_CALLS]",
    10: "[IMG]",
    11: "<pad>",
    12: "[IMG_BREAK]",
    13: "[IMG_END]",
    14: "[PREFIX]",
    15: "[MIDDLE]",
    16: "[SUFFIX]",
    17: "[SYSTEM_PROMPT]",
    18: "[/SYSTEM_PROMPT]",
    19: "[TOOL_CONTENT]",
    24: "[AUDIO]",
    25: "[BEGIN_AUDIO]",
    32: "[ARGS]",
    33: "[CALL_ID]",
    34: "[TRANSCRIBE]",
}

#: Voxtral's audio front end: 16 kHz, 12.5 audio tokens/s, Whisper-style 128-bin mel, 30 s chunks.
VOXTRAL_AUDIO_CONFIG: dict[str, Any] = {
    "sampling_rate": 16000,
    "frame_rate": 12.5,
    "audio_encoding_config": {"num_mel_bins": 128, "hop_length": 160, "window_size": 400},
    "chunk_length_s": 30.0,
}

_SHIPPED_TEKKEN = "tekken_240911.json"


def vocab_size(kind: TekkenKind) -> int:
    """Total number of token ids (specials included) of a tokenizer kind."""
    _check_kind(kind)
    return TINY_VOCAB_SIZE if kind == "tiny" else FULL_VOCAB_SIZE


def byte_token_id(byte: int) -> int:
    """Id of a single-byte token: Tekken numbers the specials first."""
    return NUM_SPECIAL_TOKENS + byte


def _check_kind(kind: str) -> None:
    if kind not in TEKKEN_KINDS:
        raise ValueError(f"unknown tekken kind {kind!r}: use one of {', '.join(TEKKEN_KINDS)}")


def _shipped_tekken() -> dict[str, Any]:
    import mistral_common

    path = Path(mistral_common.__file__).parent / "data" / _SHIPPED_TEKKEN
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _special_tokens() -> list[dict[str, Any]]:
    return [
        {"rank": i, "token_str": VOXTRAL_SPECIAL_TOKENS.get(i, f"<SPECIAL_{i}>"), "is_control": True}
        for i in range(NUM_SPECIAL_TOKENS)
    ]


def tekken_data(kind: TekkenKind = "tiny") -> dict[str, Any]:
    """The JSON content of an audio-capable ``tekken.json`` of the given kind."""
    _check_kind(kind)
    shipped = _shipped_tekken()
    if kind == "tiny":
        vocab = [
            {"rank": i, "token_bytes": base64.b64encode(bytes([i])).decode("ascii"), "token_str": None}
            for i in range(NUM_BYTE_TOKENS)
        ]
        config = {
            "pattern": shipped["config"]["pattern"],
            "num_vocab_tokens": NUM_BYTE_TOKENS,
            "default_vocab_size": TINY_VOCAB_SIZE,
            "default_num_special_tokens": NUM_SPECIAL_TOKENS,
            "version": TEKKEN_VERSION,
        }
    else:
        vocab = shipped["vocab"]
        config = dict(shipped["config"], version=TEKKEN_VERSION)
        assert config["default_vocab_size"] == FULL_VOCAB_SIZE, config
    return {
        "config": config,
        "vocab": vocab,
        "special_tokens": _special_tokens(),
        "audio": dict(
            VOXTRAL_AUDIO_CONFIG, audio_encoding_config=dict(VOXTRAL_AUDIO_CONFIG["audio_encoding_config"])
        ),
    }


def write_tekken(directory: str | Path, kind: TekkenKind = "tiny") -> Path:
    """Write ``tekken.json`` into ``directory`` (created if missing) and return its path.

    The file is written to a temporary name and renamed, so a reader never sees half a file.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / TEKKEN_FILENAME
    fd, tmp = tempfile.mkstemp(prefix=".tekken-", suffix=".json", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(tekken_data(kind), f, ensure_ascii=False)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
