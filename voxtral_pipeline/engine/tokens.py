"""Voxtral's control-token ids, read from the loaded tokenizer in one place.

The engine finds audio blocks, turn starts and function calls by these ids. They come from the
tokenizer the model was loaded with (``[AUDIO]`` is 24 in every tekken file so far, but that is
the tokenizer's to say); a tokenizer without one of them is a clear error at start-up, never a
silent ``<unk>`` (id 0) that would match nothing, or everything.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

REQUIRED = {
    "audio": "[AUDIO]",
    "begin_audio": "[BEGIN_AUDIO]",
    "inst": "[INST]",
    "end_inst": "[/INST]",
    "transcribe": "[TRANSCRIBE]",
}
OPTIONAL = {"tool_calls": "[TOOL_CALLS]", "args": "[ARGS]", "call_id": "[CALL_ID]"}


class MissingTokenError(ValueError):
    """The tokenizer lacks a control token Voxtral needs (not an audio-capable Voxtral tokenizer)."""


@dataclass(frozen=True)
class SpecialTokens:
    """Ids of the control tokens the engine reads (None: the tokenizer has no such optional token)."""

    audio: int
    begin_audio: int
    inst: int
    end_inst: int
    transcribe: int
    eos: int
    tool_calls: int | None = None
    args: int | None = None
    call_id: int | None = None

    @classmethod
    def from_tokenizer(cls, tokenizer: Any) -> SpecialTokens:
        """Read the ids from a ``MistralCommonBackend`` (or anything with ``convert_tokens_to_ids``)."""
        ids: dict[str, int | None] = {}
        for field, token in REQUIRED.items():
            found = _control_id(tokenizer, token)
            if found is None:
                raise MissingTokenError(
                    f"the Voxtral tokenizer has no {token} control token: it is not an audio-capable "
                    "Voxtral (tekken v7+) tokenizer"
                )
            ids[field] = found
        for field, token in OPTIONAL.items():
            ids[field] = _control_id(tokenizer, token)
        return cls(eos=int(tokenizer.eos_token_id), **ids)  # type: ignore[arg-type]


def _control_id(tokenizer: Any, token: str) -> int | None:
    inner = getattr(
        getattr(getattr(tokenizer, "tokenizer", None), "instruct_tokenizer", None), "tokenizer", None
    )
    lookup = getattr(inner, "get_special_token", None) or getattr(inner, "get_control_token", None)
    if lookup is not None:
        try:
            return int(lookup(token))
        except ValueError:
            return None
    found = tokenizer.convert_tokens_to_ids(token)
    unk = getattr(tokenizer, "unk_token_id", None)
    return None if found is None or found == unk else int(found)
