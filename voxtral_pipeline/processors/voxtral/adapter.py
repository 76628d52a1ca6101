"""From pipecat's universal ``LLMContext`` to the chat messages mistral-common renders for Voxtral.

As pipecat's adapters convert the context to a provider's request at the boundary, this one makes
the request Voxtral takes: user audio (``input_audio`` parts, as ``LLMContext.create_audio_message``
makes them) as mistral-common audio chunks, user turns past the audio budget as their transcript,
system messages and the service's system instruction as text in the first user turn (Voxtral takes
no system prompt with audio: mistral-common's v7 validator rejects it), developer messages as user
text, tool calls and results in the OpenAI shape both mistral-common and vLLM read. What Voxtral
cannot take (images, files, an unknown role) is left out and named in :attr:`VoxtralRequest.dropped`
so the stage can say so once, and answer the rest.

Tools are converted by pipecat's OpenAI adapter (mistral-common reads the OpenAI tool format).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pipecat.adapters.llm.services.open_ai_adapter import OpenAILLMAdapter
from pipecat.processors.aggregators.llm_context import LLMContext, LLMSpecificMessage

#: The id under which ``LLMSpecificMessage``\ s for Voxtral are kept in a context.
VOXTRAL_LLM_ID = "voxtral"


@dataclass
class VoxtralRequest:
    """Chat messages for mistral-common / vLLM, and what of the context was left out (in words)."""

    messages: list[dict[str, Any]]
    dropped: list[str] = field(default_factory=list)


def audio_data(message: Any) -> list[str]:
    """The base64 WAV payloads of a message's ``input_audio`` parts (in order)."""
    if not isinstance(message, dict) or not isinstance(message.get("content"), list):
        return []
    return [
        p["input_audio"]["data"]
        for p in message["content"]
        if isinstance(p, dict) and p.get("type") == "input_audio" and isinstance(p.get("input_audio"), dict)
    ]


def message_text(content: Any) -> str:
    """The text of a message's content (a string, or its text parts joined)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


class VoxtralLLMAdapter(OpenAILLMAdapter):
    """Converts an ``LLMContext`` to Voxtral's chat request (see the module docstring)."""

    @property
    def id_for_llm_specific_messages(self) -> str:
        return VOXTRAL_LLM_ID

    def voxtral_request(
        self,
        context: LLMContext,
        *,
        instructions: str | None,
        as_text: Callable[[dict[str, Any]], str | None] = lambda _m: None,
        messages: Sequence[Any] | None = None,
    ) -> VoxtralRequest:
        """The chat request for ``context`` (or for ``messages``, a prefix of it).

        ``as_text(message)`` says how a user message with audio is rendered: None as audio (inside
        the audio budget), else the text that stands for it (its transcript or a placeholder).
        """
        out: list[dict[str, Any]] = []
        dropped: list[str] = []
        system: list[str] = []
        source = context.get_messages() if messages is None else messages
        for i, message in enumerate(source):
            if isinstance(message, LLMSpecificMessage):
                if message.llm == VOXTRAL_LLM_ID:
                    out.append(message.message)
                continue  # another provider's message: not ours to send
            role = message.get("role")
            if role == "system":
                system.append(message_text(message.get("content")))
            elif role in ("user", "developer"):
                text = as_text(message) if audio_data(message) else None
                content = (
                    [{"type": "text", "text": text}]
                    if text is not None
                    else self._user_parts(message, i, dropped)
                )
                if content:
                    _append_user(out, content)
            elif role == "assistant":
                text = message_text(message.get("content"))
                if message.get("tool_calls"):
                    out.append({"role": "assistant", "content": text, "tool_calls": message["tool_calls"]})
                elif text:  # an answer cut off before its first word is left out (the validator rejects it)
                    out.append({"role": "assistant", "content": text})
            elif role == "tool":
                tool = {
                    "role": "tool",
                    "tool_call_id": message.get("tool_call_id"),
                    "content": _tool_content(message),
                }
                if message.get("name"):
                    tool["name"] = message["name"]
                out.append(tool)
            else:
                dropped.append(f"message {i} with role {role!r}")
        _place_instructions(out, "\n\n".join(s for s in [*system, instructions or ""] if s) or None)
        return VoxtralRequest(out, dropped)

    @staticmethod
    def _user_parts(message: dict[str, Any], index: int, dropped: list[str]) -> list[dict[str, Any]]:
        content = message.get("content")
        if isinstance(content, str):
            return [{"type": "text", "text": content}] if content else []
        parts: list[dict[str, Any]] = []
        for part in content or []:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text":
                if part.get("text"):
                    parts.append({"type": "text", "text": part["text"]})
            elif kind == "input_audio":
                parts.append({"type": "audio", "base64": part["input_audio"]["data"]})
            elif kind == "audio":  # already mistral-common's shape
                parts.append(part)
            else:
                dropped.append(
                    f"a {kind or 'malformed'} part of message {index} (Voxtral hears audio and reads text)"
                )
        # mistral-common wants the audio before the text of a turn (as build_conversation puts it).
        return [p for p in parts if p["type"] == "audio"] + [p for p in parts if p["type"] == "text"]


def _tool_content(message: dict[str, Any]) -> str:
    content = message.get("content")
    return content if isinstance(content, str) else message_text(content)


def _append_user(out: list[dict[str, Any]], content: list[dict[str, Any]]) -> None:
    """Consecutive user messages become one (Voxtral's template alternates roles)."""
    if out and out[-1]["role"] == "user":
        out[-1]["content"] = [*out[-1]["content"], *content]
    else:
        out.append({"role": "user", "content": content})


def _place_instructions(out: list[dict[str, Any]], instructions: str | None) -> None:
    """Put the instructions in the first user turn (one is made when the context starts otherwise)."""
    if not instructions:
        return
    if not out or out[0]["role"] != "user":
        out.insert(0, {"role": "user", "content": [{"type": "text", "text": instructions}]})
        return
    content = list(out[0]["content"])
    texts = [i for i, p in enumerate(content) if p.get("type") == "text"]
    if texts:
        first = texts[0]
        content[first] = {"type": "text", "text": f"{instructions}\n\n{content[first]['text']}"}
    else:
        content.append({"type": "text", "text": instructions})
    out[0] = {**out[0], "content": content}
