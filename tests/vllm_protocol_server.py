"""A local stand-in for a vLLM server: the OpenAI streaming protocol, with vLLM's checks on the request.

It validates a ``/v1/chat/completions`` body the way vLLM does for Voxtral: the model name, the
content part types, at most 5 audios per prompt, every ``input_audio`` a base64 WAV, and the
messages accepted by mistral-common's chat validator (the same ``apply_chat_template`` call vLLM's
``MistralRenderer`` makes, tools included). With tools it behaves as ``vllm serve
--enable-auto-tool-choice --tool-call-parser mistral``: ``tool_choice: "auto"`` is refused unless
``auto_tool_choice`` is on, assistant ``tool_calls`` and ``tool`` messages are checked, and a call
queued in ``tool_calls_next`` is streamed as ``tool_calls`` deltas (finish reason ``tool_calls``)
the way vLLM's Mistral tool parser streams one; ``cut_next`` ends such a stream as if ``max_tokens``
had cut the call (vLLM still says ``tool_calls`` then: only the usage shows the limit was hit). An
answer the limit cuts ends with ``length``, as vLLM's does; ``min_tokens`` is checked as vLLM's
sampling parameters check it (at most ``max_tokens``) and holds the end off (the reply's words
repeat). It keeps every request (with its decoded audio) for the test to check, and can be told
to fail, hang or drop the next request.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import random
import string
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import soundfile as sf
from aiohttp import web

MAX_AUDIOS = 5


@dataclass
class ReceivedRequest:
    headers: dict[str, str]
    body: dict[str, Any]
    audios: list[np.ndarray] = field(default_factory=list)
    prompt_tokens: int = 0


class VLLMProtocolServer:
    """``async with VLLMProtocolServer(tokenizer) as server:`` then use ``server.base_url``."""

    def __init__(
        self,
        tokenizer: Any,
        model: str = "mistralai/Voxtral-Mini-3B-2507",
        api_key: str | None = None,
        port: int = 0,
    ):
        self.tokenizer = tokenizer
        self.port = port  # 0: any free port (a fixed one lets a test bring a "crashed" server back)
        self.model = model
        self.api_key = api_key
        self.requests: list[ReceivedRequest] = []
        self.transcriptions: list[np.ndarray] = []
        #: The form fields of each transcription request (all but the file).
        self.transcription_fields: list[dict[str, str]] = []
        self.reply_words = ["Hello", " there,", " how", " can", " I", " help?"]
        self.fail_next: int | None = None  # HTTP status for the next chat request
        self.hang_next = False  # send headers, then nothing
        self.drop_next = False  # close the connection after the first chunk
        self.auto_tool_choice = (
            True  # as if started with --enable-auto-tool-choice --tool-call-parser mistral
        )
        #: Calls to stream, one list per request that ends with a user message: (name, arguments),
        #: the arguments as an object or as the raw JSON text streamed (partial, or empty). An empty
        #: list is the call marker alone: nothing streamed (with ``cut_next = "length"``: the limit
        #: cut the answer before a function name, as vLLM's Mistral parser streams it).
        self.tool_calls_next: list[list[tuple[str, dict[str, Any] | str]]] = []
        #: End the next call stream as if max_tokens cut it, with this finish_reason (vLLM's own
        #: is "tool_calls": it reports that whenever its parser streamed a call).
        self.cut_next: str | None = None
        self._runner: web.AppRunner | None = None
        self._release = asyncio.Event()
        self.base_url = ""

    async def __aenter__(self) -> VLLMProtocolServer:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/audio/transcriptions", self._transcribe)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.base_url = f"http://127.0.0.1:{port}/v1"
        return self

    async def __aexit__(self, *exc: Any) -> None:
        assert self._runner is not None
        self._release.set()
        await self._runner.cleanup()

    # ------------------------------------------------------------------------------------------

    def _error(self, status: int, message: str) -> web.Response:
        body = {"error": {"message": message, "type": "BadRequestError", "code": status}}
        return web.json_response(body, status=status)

    def _check_auth(self, request: web.Request) -> web.Response | None:
        if self.api_key and request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return self._error(401, "Unauthorized")
        return None

    def _validate(self, body: dict[str, Any], received: ReceivedRequest) -> str | None:
        if body.get("model") != self.model:
            return f"The model `{body.get('model')}` does not exist."
        if body.get("stream") is not True:
            return "this server only streams"
        for key, kind in (
            ("temperature", (int, float)),
            ("top_p", (int, float)),
            ("max_tokens", int),
            ("min_tokens", int),
        ):
            if key in body and not isinstance(body[key], kind):
                return f"{key} has the wrong type"
        min_tokens, max_tokens = body.get("min_tokens", 0), body.get("max_tokens")
        if min_tokens < 0:  # vLLM's SamplingParams checks
            return f"min_tokens must be greater than or equal to 0, got {min_tokens}."
        if max_tokens is not None and min_tokens > max_tokens:
            return f"min_tokens must be less than or equal to max_tokens={max_tokens}, got {min_tokens}."
        if (problem := self._check_tools(body)) is not None:
            return problem
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return "messages must be a non-empty list"
        for message in messages:
            if message.get("role") not in ("user", "assistant", "tool"):
                return f"unsupported role {message.get('role')!r}"
            if (problem := _check_tool_fields(message)) is not None:
                return problem
            content = message.get("content")
            if isinstance(content, str) or (content is None and message.get("tool_calls")):
                continue
            for part in content:
                kind = part.get("type")
                if kind == "text":
                    continue
                if kind != "input_audio":
                    return f"unsupported content part {kind!r}"
                audio = part["input_audio"]
                if audio.get("format") != "wav":
                    return "input_audio.format must be wav"
                try:
                    samples, rate = sf.read(
                        io.BytesIO(base64.b64decode(audio["data"], validate=True)), dtype="float32"
                    )
                except Exception as e:
                    return f"input_audio is not a base64 WAV: {e}"
                if rate != 16000 or samples.ndim != 1:
                    return "expected 16 kHz mono audio"
                received.audios.append(samples)
        if len(received.audios) > MAX_AUDIOS:
            return f"At most {MAX_AUDIOS} audio(s) may be provided in one prompt."
        try:  # what vLLM's MistralRenderer does with the messages
            enc = self.tokenizer.apply_chat_template(
                [messages], tools=body.get("tools"), tokenize=True, return_dict=True, return_tensors=None
            )
        except Exception as e:
            return f"mistral-common rejected the conversation: {e}"
        received.prompt_tokens = len(enc["input_ids"][0])
        return None

    def _check_tools(self, body: dict[str, Any]) -> str | None:
        tools, choice = body.get("tools"), body.get("tool_choice")
        if tools is None:
            return None
        if not isinstance(tools, list) or not all(
            isinstance(t, dict)
            and t.get("type") == "function"
            and isinstance(t.get("function"), dict)
            and isinstance(t["function"].get("name"), str)
            for t in tools
        ):
            return "tools must be a list of {type: function, function: {name, ...}}"
        if choice == "auto" and not self.auto_tool_choice:
            return '"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set'
        if choice not in (None, "auto", "none", "required") and not isinstance(choice, dict):
            return f"invalid tool_choice {choice!r}"
        return None

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        if (denied := self._check_auth(request)) is not None:
            return denied
        try:
            body = await request.json()
        except json.JSONDecodeError:
            return self._error(400, "body is not JSON")
        received = ReceivedRequest(dict(request.headers), body)
        self.requests.append(received)
        if self.fail_next is not None:
            status, self.fail_next = self.fail_next, None
            return self._error(status, "synthetic server failure")
        if (problem := self._validate(body, received)) is not None:
            return self._error(400, problem)

        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        if self.hang_next:
            self.hang_next = False
            await self._release.wait()
            return resp
        base = {"id": "chatcmpl-test", "object": "chat.completion.chunk", "model": self.model}

        async def send(payload: dict[str, Any]) -> None:
            await resp.write(f"data: {json.dumps(payload)}\n\n".encode())

        await send({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
        if body.get("tools") and body["messages"][-1]["role"] == "user" and self.tool_calls_next:
            streamed = await self._stream_tool_calls(send, base, self.tool_calls_next.pop(0))
            # vLLM says "tool_calls" only once its parser has a call; after the marker alone it
            # streams nothing and gives the engine's own reason. The end-of-sequence token counts.
            finish, tokens = "tool_calls" if streamed else "stop", streamed + 1
            if self.cut_next is not None:
                finish, tokens, self.cut_next = self.cut_next, body.get("max_tokens", streamed), None
            await send({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
            usage = {
                "prompt_tokens": received.prompt_tokens,
                "completion_tokens": tokens,
                "total_tokens": received.prompt_tokens + tokens,
            }
            await send({**base, "choices": [], "usage": usage})
            await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
            return resp
        # min_tokens holds the end off: the reply goes on (its words again) until that many are out.
        wanted = max(len(self.reply_words), body.get("min_tokens", 0))
        reply = [self.reply_words[i % len(self.reply_words)] for i in range(wanted)]
        words = reply[: body.get("max_tokens", wanted)]
        for i, word in enumerate(words):
            await send({**base, "choices": [{"index": 0, "delta": {"content": word}, "finish_reason": None}]})
            if self.drop_next and i == 1:
                self.drop_next = False
                await asyncio.sleep(0.2)  # let the client read what was sent before the connection drops
                assert request.transport is not None
                request.transport.close()
                return resp
        finish = "length" if len(words) < len(reply) else "stop"
        await send({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
        usage = {
            "prompt_tokens": received.prompt_tokens,
            "completion_tokens": len(words),
            "total_tokens": received.prompt_tokens + len(words),
        }
        await send({**base, "choices": [], "usage": usage})
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def _stream_tool_calls(
        self, send: Any, base: dict[str, Any], calls: list[tuple[str, dict[str, Any] | str]]
    ) -> int:
        """As vLLM's Mistral tool parser streams: the name (and an id) first, then the arguments in
        pieces (none when they are empty). Returns the deltas sent (standing for tokens)."""
        sent = 0
        for index, (name, arguments) in enumerate(calls):
            call_id = "".join(random.choices(string.ascii_letters + string.digits, k=9))
            text = arguments if isinstance(arguments, str) else json.dumps(arguments)
            pieces = [p for p in (text[: len(text) // 2], text[len(text) // 2 :]) if p]
            first = {
                "index": index,
                "type": "function",
                "id": call_id,
                "function": {"name": name, "arguments": ""},
            }
            await send(
                {**base, "choices": [{"index": 0, "delta": {"tool_calls": [first]}, "finish_reason": None}]}
            )
            for piece in pieces:
                delta = {"tool_calls": [{"index": index, "function": {"arguments": piece}}]}
                await send({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]})
            sent += 1 + len(pieces)
        return sent

    async def _transcribe(self, request: web.Request) -> web.Response:
        if (denied := self._check_auth(request)) is not None:
            return denied
        form = await request.post()
        if form.get("model") != self.model:
            return self._error(400, "unknown model")
        upload = form["file"]
        samples, _ = sf.read(io.BytesIO(upload.file.read()), dtype="float32")  # type: ignore[union-attr]
        self.transcriptions.append(samples)
        self.transcription_fields.append({k: str(v) for k, v in form.items() if k != "file"})
        return web.json_response({"text": f"transcript {len(self.transcriptions)}"})


def _check_tool_fields(message: dict[str, Any]) -> str | None:
    """OpenAI's rules for assistant ``tool_calls`` and ``tool`` messages (as vLLM's protocol models)."""
    if message["role"] == "tool":
        if not isinstance(message.get("tool_call_id"), str) or not isinstance(message.get("content"), str):
            return "a tool message needs a tool_call_id and a string content"
        return None
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        if call.get("type") != "function" or not isinstance(call.get("id"), str):
            return "a tool call needs an id and type function"
        if not isinstance(function.get("name"), str) or not isinstance(function.get("arguments"), str):
            return "a tool call's function needs a name and arguments as a JSON string"
        try:
            json.loads(function["arguments"])
        except json.JSONDecodeError:
            return "a tool call's arguments must be JSON"
    return None
