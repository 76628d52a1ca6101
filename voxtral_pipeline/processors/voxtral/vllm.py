"""Voxtral on a vLLM server: streaming ``/v1/chat/completions`` with ``input_audio`` parts.

The request body is the one vLLM documents for Voxtral (OpenAI chat format, audio as base64 WAV in
``input_audio`` parts). With tools, the body carries ``tools`` and ``tool_choice: "auto"``; the
server (``--tool-call-parser mistral --enable-auto-tool-choice``) streams a call as ``tool_calls``
deltas, which are gathered here, and the call and its result go back as an assistant message with
``tool_calls`` and a ``tool`` message, as in OpenAI's API.

The session id goes in a header and in the body's ``user`` field, so a router can keep a session
on one replica (and its prefix cache). vLLM takes at most 5 audios per prompt: older user turns
go as text (transcript or placeholder). Transcripts come from the server's
``/v1/audio/transcriptions``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from voxtral_pipeline.audio import wav_bytes
from voxtral_pipeline.config import VLLMConfig
from voxtral_pipeline.engine import EngineResult
from voxtral_pipeline.engine.requests import FinishReason
from voxtral_pipeline.models.voxtral import SAMPLE_RATE


class VLLMError(RuntimeError):
    """The server could not be reached, timed out, refused the request or broke the stream."""


def openai_messages(conversation: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Chat-template messages with ``{"type": "audio", "base64": ...}`` parts as ``input_audio`` parts."""
    out: list[dict[str, Any]] = []
    for message in conversation:
        content = message.get("content")
        if isinstance(content, list):
            parts = []
            for part in content:
                if part.get("type") == "audio":
                    parts.append(
                        {"type": "input_audio", "input_audio": {"data": part["base64"], "format": "wav"}}
                    )
                else:
                    parts.append(part)
            content = parts
        converted = {"role": message["role"], "content": content}
        for key in ("tool_calls", "tool_call_id", "name"):
            if message.get(key) is not None:
                converted[key] = message[key]
        out.append(converted)
    return out


class VLLMClient:
    """One session's connection to a vLLM server."""

    def __init__(self, config: VLLMConfig, session_id: str):
        self.config = config
        self.session_id = session_id
        self._http: aiohttp.ClientSession | None = None

    def _headers(self) -> dict[str, str]:
        headers = {self.config.session_header: self.session_id}
        if self.config.api_key:
            headers["Authorization"] = f"Bearer {self.config.api_key}"
        return headers

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            c = self.config
            timeout = aiohttp.ClientTimeout(
                total=None, sock_connect=c.connect_timeout_secs, sock_read=c.read_timeout_secs
            )
            self._http = aiohttp.ClientSession(timeout=timeout)
        return self._http

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    def chat_body(
        self,
        conversation: list[dict[str, Any]],
        *,
        max_tokens: int,
        temperature: float,
        top_p: float,
        tools: list[dict[str, Any]] | None = None,
        min_tokens: int = 0,
    ) -> dict[str, Any]:
        """The streaming request; ``min_tokens`` (vLLM's sampling parameter) holds off the end of
        the answer, as ``min_new_tokens`` does on the in-process engine (benchmarks: fixed lengths).
        vLLM refuses one above ``max_tokens``: it is capped there (the limit wins on both backends).
        """
        body = {
            "model": self.config.model,
            "messages": openai_messages(conversation),
            "stream": True,
            "stream_options": {"include_usage": True},
            "temperature": temperature,
            "top_p": top_p,
            "max_tokens": max_tokens,
            "user": self.session_id,
        }
        if min_tokens > 0:
            body["min_tokens"] = min(min_tokens, max_tokens)
        if tools:
            body["tools"] = tools
            body["tool_choice"] = "auto"
        return body

    async def stream_chat(
        self, body: dict[str, Any], result: EngineResult, tool_calls: dict[int, dict[str, str]] | None = None
    ) -> AsyncIterator[str]:
        """Yield text deltas of a streamed answer; fills ``result`` (usage, timings) as it goes.

        Streamed ``tool_calls`` deltas are gathered into ``tool_calls`` (by index: ``id``,
        ``name``, ``arguments`` as the JSON text so far), never yielded as text.
        ``result.finish_reason`` is ``"length"`` when ``max_tokens`` ended the answer (see
        :func:`finish_reason`), else ``"stop"``.

        Raises:
            VLLMError: connection failure, timeout, HTTP error or a broken stream.
        """
        url = self.config.base_url.rstrip("/") + "/chat/completions"
        t0 = time.perf_counter()
        result.generate_calls = 1
        reported: str | None = None  # the server's finish_reason
        completion_tokens: int | None = None
        try:
            async with self._session().post(url, json=body, headers=self._headers()) as resp:
                if resp.status != 200:
                    detail = (await resp.text())[:300]
                    raise VLLMError(f"vLLM answered HTTP {resp.status}: {detail}")
                lines = resp.content.__aiter__()
                first = True
                while True:
                    try:
                        if first:
                            raw = await asyncio.wait_for(
                                lines.__anext__(), self.config.first_token_timeout_secs
                            )
                        else:
                            raw = await lines.__anext__()
                    except StopAsyncIteration:
                        break
                    line = raw.decode("utf-8").strip()
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    chunk = json.loads(data)
                    if chunk.get("error"):
                        raise VLLMError(f"vLLM stream error: {chunk['error']}")
                    usage = chunk.get("usage")
                    if usage:
                        result.prompt_tokens = int(usage.get("prompt_tokens") or 0)
                        details = usage.get("prompt_tokens_details") or {}
                        cached = int(details.get("cached_tokens") or 0)
                        result.cached_tokens = cached
                        result.prefill_tokens = result.prompt_tokens - cached
                        if usage.get("completion_tokens") is not None:
                            completion_tokens = int(usage["completion_tokens"])
                    for choice in chunk.get("choices") or []:
                        reported = choice.get("finish_reason") or reported
                        delta = choice.get("delta") or {}
                        for call in delta.get("tool_calls") or []:
                            first = False
                            _gather_tool_call(tool_calls, call)
                        text = delta.get("content") or ""
                        if text:
                            first = False
                            if result.first_token_s is None:
                                result.first_token_s = time.perf_counter() - t0
                            result.token_ids.append(-1)  # ids are not streamed; count the chunks
                            result.text += text
                            yield text
            result.finish_reason = finish_reason(reported, completion_tokens, body.get("max_tokens"))
        except VLLMError:
            raise
        except (TimeoutError, asyncio.TimeoutError) as e:
            raise VLLMError(f"vLLM at {self.config.base_url} timed out") from e
        except aiohttp.ClientConnectorError as e:
            raise VLLMError(f"cannot reach vLLM at {self.config.base_url}: {e}") from e
        except aiohttp.ClientError as e:
            raise VLLMError(
                f"connection to vLLM at {self.config.base_url} failed: {type(e).__name__}: {e}"
            ) from e
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise VLLMError(f"vLLM sent a malformed stream: {e}") from e
        finally:
            result.generate_s = time.perf_counter() - t0

    async def transcribe(self, samples: Any, language: str | None, max_tokens: int) -> str:
        """The server's transcript of 16 kHz float samples (``/v1/audio/transcriptions``).

        ``max_tokens`` bounds it (the caller's limit, the one the in-process engine gets): without
        one a transcript can run to the context limit (a random or confused model never stops).
        """
        url = self.config.base_url.rstrip("/") + "/audio/transcriptions"
        form = aiohttp.FormData()
        form.add_field("file", wav_bytes(samples, SAMPLE_RATE), filename="turn.wav", content_type="audio/wav")
        form.add_field("model", self.config.model)
        form.add_field("temperature", "0")
        form.add_field("max_completion_tokens", str(max_tokens))
        if language:
            form.add_field("language", language)
        try:
            async with self._session().post(url, data=form, headers=self._headers()) as resp:
                if resp.status != 200:
                    raise VLLMError(f"vLLM transcription answered HTTP {resp.status}")
                return str((await resp.json()).get("text", "")).strip()
        except (TimeoutError, asyncio.TimeoutError, aiohttp.ClientError) as e:
            raise VLLMError(f"vLLM transcription failed: {type(e).__name__}") from e


def finish_reason(
    reported: str | None, completion_tokens: int | None, max_tokens: int | None
) -> FinishReason | None:
    """``"length"`` when the token limit ended the answer, ``"stop"`` when the model did (None: no end seen).

    vLLM reports ``"tool_calls"`` for any answer in which its tool parser streamed a call, even
    one ``max_tokens`` cut off (its ``finish_reason`` is overridden whenever tools were streamed),
    so the usage is read too: an answer that used every token it was allowed was cut. (One whose
    end-of-sequence token fell on exactly the last allowed token counts as cut too: the server's
    answer does not tell them apart.)
    """
    if reported == "length":
        return "length"
    if completion_tokens is not None and max_tokens is not None and completion_tokens >= max_tokens:
        return "length"
    return "stop" if reported is not None else None


def _gather_tool_call(calls: dict[int, dict[str, str]] | None, delta: dict[str, Any]) -> None:
    """Fold one streamed ``tool_calls`` delta into the calls by index (OpenAI streaming format)."""
    if calls is None:
        return
    entry = calls.setdefault(int(delta.get("index") or 0), {"id": "", "name": "", "arguments": ""})
    if delta.get("id"):
        entry["id"] = str(delta["id"])
    function = delta.get("function") or {}
    if function.get("name"):
        entry["name"] += str(function["name"])
    if function.get("arguments"):
        entry["arguments"] += str(function["arguments"])
