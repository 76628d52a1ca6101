"""A local stand-in for a vLLM server: the OpenAI streaming protocol, with vLLM's checks on the request.

It validates a ``/v1/chat/completions`` body the way vLLM does for Voxtral: the model name, the
content part types, at most 5 audios per prompt, every ``input_audio`` a base64 WAV, and the
messages accepted by mistral-common's chat validator (the same ``apply_chat_template`` call vLLM's
``MistralRenderer`` makes). It keeps every request (with its decoded audio) for the test to check,
and can be told to fail, hang or drop the next request.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
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
        self, tokenizer: Any, model: str = "mistralai/Voxtral-Mini-3B-2507", api_key: str | None = None
    ):
        self.tokenizer = tokenizer
        self.model = model
        self.api_key = api_key
        self.requests: list[ReceivedRequest] = []
        self.transcriptions: list[np.ndarray] = []
        self.reply_words = ["Hello", " there,", " how", " can", " I", " help?"]
        self.fail_next: int | None = None  # HTTP status for the next chat request
        self.hang_next = False  # send headers, then nothing
        self.drop_next = False  # close the connection after the first chunk
        self._runner: web.AppRunner | None = None
        self._release = asyncio.Event()
        self.base_url = ""

    async def __aenter__(self) -> VLLMProtocolServer:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/audio/transcriptions", self._transcribe)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
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
        for key, kind in (("temperature", (int, float)), ("top_p", (int, float)), ("max_tokens", int)):
            if key in body and not isinstance(body[key], kind):
                return f"{key} has the wrong type"
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return "messages must be a non-empty list"
        for message in messages:
            if message.get("role") not in ("user", "assistant"):
                return f"unsupported role {message.get('role')!r}"
            content = message.get("content")
            if isinstance(content, str):
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
                [messages], tokenize=True, return_dict=True, return_tensors=None
            )
        except Exception as e:
            return f"mistral-common rejected the conversation: {e}"
        received.prompt_tokens = len(enc["input_ids"][0])
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
        words = self.reply_words[: body.get("max_tokens", len(self.reply_words))]
        for i, word in enumerate(words):
            await send({**base, "choices": [{"index": 0, "delta": {"content": word}, "finish_reason": None}]})
            if self.drop_next and i == 1:
                self.drop_next = False
                await asyncio.sleep(0.2)  # let the client read what was sent before the connection drops
                assert request.transport is not None
                request.transport.close()
                return resp
        await send({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        usage = {
            "prompt_tokens": received.prompt_tokens,
            "completion_tokens": len(words),
            "total_tokens": received.prompt_tokens + len(words),
        }
        await send({**base, "choices": [], "usage": usage})
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def _transcribe(self, request: web.Request) -> web.Response:
        if (denied := self._check_auth(request)) is not None:
            return denied
        form = await request.post()
        if form.get("model") != self.model:
            return self._error(400, "unknown model")
        upload = form["file"]
        samples, _ = sf.read(io.BytesIO(upload.file.read()), dtype="float32")  # type: ignore[union-attr]
        self.transcriptions.append(samples)
        return web.json_response({"text": f"transcript {len(self.transcriptions)}"})
