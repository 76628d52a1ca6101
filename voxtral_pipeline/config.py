"""Declarative configuration for the whole pipeline.

One pydantic model per stage, all strict (unknown keys are errors), loaded from a TOML or YAML
file, then environment variables (``VOXTRAL_PIPELINE__SECTION__KEY=value``), then CLI overrides,
in that order. Errors name the field and the values it accepts.
"""

from __future__ import annotations

import json
import os
import sys
import types
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from voxtral_pipeline.languages import BRITISH_VOICE, LANGUAGES, LanguageCode

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ENV_PREFIX = "VOXTRAL_PIPELINE__"

DEFAULT_INSTRUCTIONS = (
    "You are a helpful voice assistant. Listen to the user and answer what they ask in one to three "
    "short spoken sentences. Do not use lists, markdown or emoji."
)


class ConfigError(Exception):
    """A configuration that cannot be used; the message is meant for the user as is."""


def _allows_none(annotation: Any) -> bool:
    return get_origin(annotation) in (Union, types.UnionType) and type(None) in get_args(annotation)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @model_validator(mode="before")
    @classmethod
    def _none_from_text(cls, data: Any) -> Any:
        """``none``/``null`` from ``--set`` or the environment (text only) unset an optional key."""
        if not isinstance(data, dict):
            return data
        for name, field in cls.model_fields.items():
            value = data.get(name)
            if (
                isinstance(value, str)
                and value.strip().lower() in ("none", "null")
                and _allows_none(field.annotation)
            ):
                data = {**data, name: None}
        return data


class VADConfig(_Strict):
    """Silero VAD, as shipped in pipecat."""

    confidence: float = Field(0.7, ge=0.0, le=1.0, description="Minimum speech probability.")
    start_secs: float = Field(0.2, ge=0.0, le=2.0, description="Speech needed before a start is declared.")
    stop_secs: float = Field(0.2, ge=0.0, le=3.0, description="Silence needed before a stop is declared.")
    min_volume: float = Field(0.6, ge=0.0, le=1.0, description="Minimum smoothed volume counted as speech.")


class InterruptionConfig(_Strict):
    """Barge-in: user speech while the bot is audible stops the bot (see docs/turns.md)."""

    enabled: bool = Field(
        True,
        description="User speech while the bot is speaking interrupts it; if false, speech that starts while "
        "the bot is audible is ignored (half duplex) and the bot is never cut off.",
    )
    min_speech_ms: int = Field(
        0,
        ge=0,
        le=5000,
        description="Speech needed, from its onset, before it interrupts the bot; shorter sounds (a cough, "
        "'mm-hm') are ignored while the bot speaks. At or below onset_ms the VAD start interrupts.",
    )
    onset_ms: int = Field(
        100,
        ge=20,
        le=2000,
        description="While the bot speaks, the VAD declares the user's start after this much speech (not "
        "vad.start_secs), so barge-in is quick.",
    )
    echo_margin_db: float = Field(
        2.0,
        ge=0.0,
        le=60.0,
        description="While the bot speaks, speech must be no more than this far below the user's own voice "
        "level (learned from their turns) to count: the bot's voice leaking back into the microphone is "
        "quieter and does not interrupt. 60 turns the gate off.",
    )


#: Default end-of-turn schedule: (seconds of silence, Smart Turn probability that ends the turn
#: there). Chosen on the end-of-turn corpus (benchmarks/eot_bench.py, docs/turns.md).
DEFAULT_EOT_SCHEDULE: tuple[tuple[float, float], ...] = (
    (0.2, 0.7),
    (0.3, 0.995),
    (0.4, 0.995),
    (0.5, 0.995),
    (0.6, 0.995),
    (0.8, 0.995),
    (1.0, 0.995),
    (1.3, 0.995),
)


class EndOfTurnConfig(_Strict):
    """How Smart Turn's verdicts end a turn (see docs/turns.md, "End of turn")."""

    strategy: Literal["reevaluate", "once"] = Field(
        "reevaluate",
        description="reevaluate: ask Smart Turn again as the silence grows and end the turn when its "
        "probability clears the schedule's bar; once: pipecat's default, ask once at the VAD stop and on "
        "'incomplete' wait turns.max_silence_secs.",
    )
    schedule: list[tuple[float, float]] = Field(
        default_factory=lambda: [tuple(p) for p in DEFAULT_EOT_SCHEDULE],
        min_length=1,
        max_length=50,
        description="reevaluate: (seconds of silence, probability) points; at each, Smart Turn is asked "
        "again and a probability at or above the bar ends the turn.",
    )
    context_pause_secs: float | None = Field(
        0.3,
        ge=0.0,
        le=10.0,
        description="reevaluate: after a pause this long inside the turn, Smart Turn judges the speech "
        "that follows on its own (it hears 'fragment, silence, rest' as unfinished too often); "
        "null: always the whole turn.",
    )

    @model_validator(mode="after")
    def _check_schedule(self) -> EndOfTurnConfig:
        for secs, prob in self.schedule:
            if not (0.0 < secs <= 30.0 and 0.0 <= prob <= 1.0):
                raise ValueError(
                    f"end_of_turn.schedule point ({secs}, {prob}): silence must be in (0, 30] s and "
                    "probability in [0, 1]"
                )
        return self


class TurnConfig(_Strict):
    """Turn stage: VAD plus Smart Turn v3 decide when the user's utterance is complete."""

    vad: VADConfig = Field(default_factory=VADConfig)
    smart_turn: bool = Field(
        True, description="Use Smart Turn v3 to confirm the end of a turn; if false the VAD stop ends it."
    )
    max_silence_secs: float = Field(
        1.8,
        gt=0.0,
        le=30.0,
        description="Silence that ends a turn whatever Smart Turn says (pipecat's default: 3 s).",
    )
    end_of_turn: EndOfTurnConfig = Field(default_factory=EndOfTurnConfig)
    pre_roll_ms: int = Field(300, ge=0, le=2000, description="Audio kept from before the VAD start.")
    min_utterance_ms: int = Field(
        150,
        ge=0,
        le=5000,
        description="Turns with less speech than this (VAD speech segments, pauses excluded) are ignored: "
        "clicks, coughs, blips the VAD let through; the VAD measures a one-syllable 'Yes.' at ~230 ms. "
        "The one home of this rule (voxtral.min_utterance_ms only guards against empty audio).",
    )
    max_utterance_secs: float = Field(
        60.0,
        ge=1.0,
        le=600.0,
        description="A turn this long is ended at the user's next pause (VAD stop), whatever Smart Turn "
        "says.",
    )
    speculative: bool = Field(
        True,
        description="Start Voxtral on the audio so far at each VAD stop, before the end of turn is "
        "confirmed; its answer is released on confirmation and discarded, unheard, if the user goes on "
        "speaking (takes Smart Turn off the critical path; costs an inference per thinking pause).",
    )
    interruptions: InterruptionConfig = Field(default_factory=InterruptionConfig)


class VLLMConfig(_Strict):
    """A vLLM server speaking the OpenAI API (``voxtral.backend = "vllm"``); see docs/vllm.md."""

    base_url: str = Field("http://127.0.0.1:8000/v1", description="The server's OpenAI API root.")
    model: str = Field("mistralai/Voxtral-Mini-3B-2507", description="Model name the server serves.")
    api_key: str | None = Field(None, description="Bearer token, if the server wants one.")
    session_header: str = Field(
        "X-Session-ID",
        description="Header carrying the session id (also sent as the body's `user` field), so a router "
        "can keep a session on one replica and its prefix cache.",
    )
    max_audios: int = Field(5, ge=1, le=5, description="Audio parts per prompt (vLLM caps Voxtral at 5).")
    connect_timeout_secs: float = Field(5.0, gt=0.0, le=120.0, description="Connecting to the server.")
    first_token_timeout_secs: float = Field(
        30.0, gt=0.0, le=600.0, description="Waiting for the first streamed token."
    )
    read_timeout_secs: float = Field(
        30.0, gt=0.0, le=600.0, description="Longest gap between streamed chunks."
    )


class ToolsConfig(_Strict):
    """Function calling: how Voxtral's calls are run (tools are registered in code: docs/tools.md)."""

    timeout_secs: float = Field(
        10.0,
        gt=0.0,
        le=600.0,
        description="A handler still running after this is cancelled and the model is told it timed out "
        "(a per-function timeout_secs given to register_function wins).",
    )
    max_rounds: int = Field(
        3,
        ge=1,
        le=16,
        description="Rounds of function calls in one answer; a call past them is not run (the answer ends).",
    )
    filler: bool = Field(True, description="Say a short filler while a slow handler runs.")
    filler_after_ms: float = Field(
        800.0, ge=0.0, le=30000.0, description="Say the filler once a handler has run this long."
    )
    filler_text: str | None = Field(
        None, description="The filler; None = 'One moment.' in the session language."
    )


class VoxtralConfig(_Strict):
    """The Voxtral stage: one inference per user turn, streamed token by token."""

    backend: Literal["transformers", "vllm"] = Field(
        "transformers", description="transformers = in-process shared engine; vllm = a vLLM server."
    )
    model: str = Field(
        "mistralai/Voxtral-Mini-3B-2507",
        description="Hub id, local directory, or dummy:tiny / dummy:full (random weights).",
    )
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N.")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto",
        description="auto = bfloat16 on GPUs with native bf16 (compute capability >= 8.0), float16 on older "
        "GPUs, float32 on CPU.",
    )
    attn_implementation: Literal["auto", "sdpa", "flash_attention_2", "eager"] = Field(
        "auto",
        description="auto = flash_attention_2 where it runs (flash-attn imports, fp16/bf16, compute "
        "capability >= 8.0), else sdpa.",
    )
    max_new_tokens: int = Field(256, ge=1, le=8192, description="Cap on the tokens of one answer.")
    temperature: float = Field(0.2, ge=0.0, le=2.0, description="0 = greedy decoding (model card: 0.2).")
    top_p: float = Field(0.95, gt=0.0, le=1.0, description="Nucleus sampling (model card: 0.95).")
    instructions: str = Field(
        DEFAULT_INSTRUCTIONS,
        description="Persona and instructions, put in the first user turn (Voxtral takes no system prompt "
        "with audio).",
    )
    seed: int | None = Field(None, description="Seed for sampling and for dummy weights.")
    warmup: bool = Field(True, description="Run one short generation at start-up (once per shared engine).")
    history_audio_turns: int = Field(
        4,
        ge=0,
        le=64,
        description="Earlier user turns kept as audio; older ones become their transcript (or a placeholder "
        "with their duration until the transcript exists).",
    )
    max_history_turns: int = Field(
        48,
        ge=1,
        le=10000,
        description="User turns (with their answers and tool calls) kept in the conversation. Past it the "
        "oldest quarter is dropped at once, so the prompt stays inside the model's context and the KV "
        "prefix is rebuilt only once per quarter.",
    )
    transcribe_history: bool = Field(
        True, description="Transcribe user turns with the same model while the engine is idle."
    )
    transcription_language: str | None = Field(
        "en", description="Language hint for transcripts (None: auto)."
    )
    min_utterance_ms: int = Field(
        100,
        ge=0,
        le=2000,
        description="Shorter audio (pre-roll included) is dropped without inference: a guard for utterances "
        "from elsewhere; short sounds are the turn stage's rule (turns.min_utterance_ms).",
    )
    silence_dbfs: float = Field(
        -50.0, ge=-120.0, le=0.0, description="Turns whose peak stays below this are dropped as silence."
    )
    max_utterance_secs: float = Field(
        90.0,
        ge=30.0,
        le=600.0,
        description="Longer utterances keep only their last part (each started 30 s is 375 audio tokens).",
    )
    kv_cache: bool = Field(
        True, description="Reuse each session's KV cache across turns (prefill only the new part)."
    )
    kv_cache_max_tokens: int = Field(
        16384,
        ge=512,
        le=131072,
        description="Per-session KV cache bound; past it only the beginning is kept.",
    )
    kv_cache_sessions: int = Field(16, ge=1, le=4096, description="Sessions whose KV caches are kept (LRU).")
    static_cache: bool = Field(
        False,
        description="Preallocated StaticCache per session (rewound between turns) instead of DynamicCache.",
    )
    compile: bool = Field(
        False, description="Compile the decode step (needs static_cache; CUDA graphs on GPU)."
    )
    mel_on_device: bool = Field(True, description="Compute mel features on the model's GPU.")
    fairness_quantum_tokens: int = Field(
        8,
        ge=1,
        le=1024,
        description="A running answer yields to another session's waiting turn after this many tokens.",
    )
    vllm: VLLMConfig = Field(default_factory=VLLMConfig)
    language: LanguageCode = Field(
        "en",
        description="Session language: Voxtral is told to answer in it (after the instructions) and it is "
        "the transcripts' language unless transcription_language is set (set by the top-level `language`).",
    )
    tools: ToolsConfig = Field(default_factory=ToolsConfig)

    @model_validator(mode="before")
    @classmethod
    def _transcripts_in_the_session_language(cls, data: Any) -> Any:
        if isinstance(data, dict) and "language" in data and "transcription_language" not in data:
            data = {**data, "transcription_language": data["language"]}
        return data


class ChunkerConfig(_Strict):
    """Word chunker: display text word by word, speech chunks sized for latency and prosody."""

    policy: Literal["adaptive", "clause", "sentence", "words"] = Field(
        "adaptive",
        description="adaptive = small first chunk, then clauses growing with the audio already queued; "
        "clause = every clause of min_words or more; sentence = whole sentences; words = fixed sizes, "
        "first_chunk_words then min_words words, ignoring punctuation (a naive baseline).",
    )
    first_chunk_words: int = Field(
        2,
        ge=1,
        le=20,
        description="The first chunk goes out once it has this many words (or at a clause mark).",
    )
    first_chunk_timeout_ms: float = Field(
        50.0,
        ge=0.0,
        le=2000.0,
        description="The first chunk also goes out this long after the last token (complete words only); "
        "0 disables the timeout.",
    )
    min_words: int = Field(
        4, ge=1, le=50, description="Later chunks end at a clause mark only once this long."
    )
    max_words: int = Field(
        30, ge=1, le=200, description="A chunk with no boundary is cut at a word boundary past this."
    )
    words_per_second: float = Field(
        3.0,
        gt=0.0,
        le=20.0,
        description="Speaking rate used to estimate how much audio the chunks already sent will play for.",
    )
    growth: float = Field(
        1.0,
        ge=0.0,
        le=10.0,
        description="adaptive: scales a later chunk's budget (the words the TTS, at its measured speed, "
        "can synthesize before the queued speech runs out); a chunk passes clause marks until it holds "
        "half of it, and with a slow TTS is cut at a word once it holds all of it (0 = every clause).",
    )


class KokoroConfig(_Strict):
    """Kokoro-82M text to speech (torch KModel, or ONNX Runtime for CPU-only hosts)."""

    model: str = Field(
        "hexgrad/Kokoro-82M",
        description="Hub id, local directory or dummy:tiny / dummy:full (torch); a .onnx file or "
        "pypi:kokoro-v1.0-int8 (ONNX Runtime).",
    )
    voice: str = Field(
        "af_heart",
        description="Voice name (a,b averages), or a path to a voice .pt (or .npy for ONNX); when not set, "
        "the language's default voice (docs/languages.md).",
    )
    voices_file: Path | None = Field(
        None, description="ONNX backend: kokoro-onnx voices .npz/.bin that voice names are looked up in."
    )
    speed: float = Field(1.0, gt=0.25, le=4.0, description="Speaking speed (1 = the voice's own).")
    lang_code: Literal["a", "b", "e", "f", "h", "i", "p"] = Field(
        "a",
        description="G2P language (misaki/kokoro codes): a = American English, b = British English, "
        "e = Spanish, f = French, h = Hindi, i = Italian, p = Brazilian Portuguese; when not set, the "
        "language's.",
    )
    language: LanguageCode = Field(
        "en",
        description="Language spoken: picks lang_code and voice when they are not set (set by the top-level "
        "`language`).",
    )
    device: str = Field("auto", description="auto (CUDA when present), cpu, cuda or cuda:N.")
    trim_db: float = Field(
        40.0, gt=0.0, le=90.0, description="Edge silence below peak minus this is trimmed."
    )
    clause_pause_ms: float = Field(
        100.0, ge=0.0, le=2000.0, description="Silence after a chunk that ends a clause (, ; :)."
    )
    sentence_pause_ms: float = Field(
        250.0, ge=0.0, le=2000.0, description="Silence after a chunk that ends a sentence (. ! ?)."
    )

    @model_validator(mode="before")
    @classmethod
    def _voice_and_g2p_of_the_language(cls, data: Any) -> Any:
        lang = LANGUAGES.get(data.get("language", "en")) if isinstance(data, dict) else None
        if lang is None:  # not a dict, or a language the field itself will reject with its choices
            return data
        data = {"lang_code": lang.kokoro_lang_codes[0], **data}
        british = data["lang_code"] == "b"
        return {"voice": BRITISH_VOICE if british else lang.voice, **data}

    @model_validator(mode="after")
    def _g2p_speaks_the_language(self) -> KokoroConfig:
        codes = LANGUAGES[self.language].kokoro_lang_codes
        if self.lang_code not in codes:
            raise ValueError(
                f"lang_code {self.lang_code!r} does not speak language {self.language!r} "
                f"(use {' or '.join(codes)})"
            )
        return self


class MetricsConfig(_Strict):
    """Per-turn latency waterfall and the session's percentiles."""

    jsonl: Path | None = Field(None, description="Append one JSON line per turn to this file.")
    log_turns: bool = Field(True, description="Log one line per turn and the session's percentiles.")
    prometheus: bool = Field(
        False,
        description="Serve per-stage latency histograms (ms) at /metrics on the bot server "
        "(prometheus-client, extra `metrics`).",
    )
    histogram_buckets_ms: list[float] = Field(
        [10, 25, 50, 100, 150, 200, 300, 400, 500, 750, 1000, 1500, 2000, 3000, 5000],
        min_length=1,
        description="Upper bounds (ms) of the Prometheus histogram buckets.",
    )
    tracing: bool = Field(
        False,
        description="OpenTelemetry spans through pipecat's tracing: a conversation span, pipecat's turn "
        "and TTS spans, and a voice_turn span per turn with one child span per stage.",
    )
    otlp_endpoint: str | None = Field(
        None,
        description="With tracing: export spans over OTLP/HTTP to this URL (e.g. "
        "http://localhost:4318/v1/traces); without it, the application installs its own tracer provider.",
    )
    service_name: str = Field("voxtral-pipeline", description="With tracing: the OpenTelemetry service.name.")

    @model_validator(mode="after")
    def _usable_exports(self) -> MetricsConfig:
        if any(not b > 0 for b in self.histogram_buckets_ms):
            raise ValueError("histogram_buckets_ms: every bucket bound must be a positive number of ms")
        if self.otlp_endpoint is not None and not self.otlp_endpoint.startswith(("http://", "https://")):
            raise ValueError(f"otlp_endpoint must be an http(s) URL, got {self.otlp_endpoint!r}")
        return self


class FileTransportConfig(_Strict):
    """Stream a WAV file in real time like a microphone; record both sides to a stereo WAV."""

    input: Path | None = Field(None, description="Input WAV (any rate, mono or stereo, int or float).")
    output: Path | None = Field(None, description="Stereo WAV: left the user, right the bot.")
    report: Path | None = Field(None, description="JSON report of every turn and the summary.")
    tail_secs: float = Field(1.0, ge=0.0, le=30.0, description="Silence streamed after the file ends.")
    idle_secs: float = Field(2.0, gt=0.0, le=60.0, description="Bot silence after which the session ends.")
    reply_timeout_secs: float = Field(
        120.0,
        gt=0.0,
        le=3600.0,
        allow_inf_nan=False,
        description="Longest wait for the bot to answer the last turn before ending (a reply that ends with "
        "nothing to say ends the wait at once).",
    )


TRANSPORT_KINDS = ("webrtc", "websocket", "daily", "local", "file")


class ServerConfig(_Strict):
    """The bot's HTTP server (webrtc and websocket transports): one pipeline per connection."""

    host: str = Field(
        "127.0.0.1",
        description="Address to bind; anything but loopback is reachable from other machines (a warning "
        "is logged).",
    )
    port: int = Field(7860, ge=0, le=65535, description="Port to listen on (0 = any free port).")
    token: str | None = Field(
        None,
        description="Shared secret: when set, /start, the WebRTC offer and candidates, /metrics and the "
        "WebSocket need it (`Authorization: Bearer TOKEN` or `?token=TOKEN`).",
    )
    max_sessions: int = Field(
        4,
        ge=1,
        le=1000,
        description="Concurrent sessions; more are refused politely (HTTP 429 / close 1013).",
    )
    max_message_bytes: int = Field(
        262144,
        ge=1024,
        le=16 * 1024 * 1024,
        description="Largest WebSocket message or WebRTC offer accepted; larger ones are dropped.",
    )
    session_timeout_secs: float | None = Field(
        None,
        gt=0.0,
        le=7 * 86400,
        allow_inf_nan=False,
        description="End a session after this long, at most a week (None: no limit).",
    )
    media_timeout_secs: float = Field(
        10.0,
        gt=0.0,
        le=300.0,
        allow_inf_nan=False,
        description="A session that has received no audio this long after it started (a WebRTC offer "
        "whose media never connects) is ended and its slot freed.",
    )
    audio_idle_secs: float | None = Field(
        60.0,
        gt=0.0,
        le=86400.0,
        allow_inf_nan=False,
        description="A session that has received no audio for this long is ended (None: never); clients "
        "send audio all the time, silence included.",
    )
    max_audio_ahead_secs: float = Field(
        2.0,
        ge=0.1,
        le=60.0,
        allow_inf_nan=False,
        description="WebSocket audio a client may send ahead of real time; beyond it, audio is dropped "
        "(and logged), so a flooding client cannot starve the others.",
    )
    flood_disconnect_secs: float | None = Field(
        10.0,
        gt=0.0,
        le=86400.0,
        allow_inf_nan=False,
        description="A WebSocket client that has had this much audio dropped for running ahead of real "
        "time is disconnected (close 1008); None: never.",
    )
    flood_cooldown_secs: float | None = Field(
        60.0,
        gt=0.0,
        le=86400.0,
        allow_inf_nan=False,
        description="After a flood disconnect the client's address (IPv6: its /64) is refused new "
        "sessions for this long, before any pipeline is built (WebSocket: close 1008 with the seconds "
        "left; offers and /start: HTTP 429 with Retry-After); each repeat offence doubles it. None: no "
        "cooldown.",
    )
    flood_cooldown_max_secs: float = Field(
        900.0,
        gt=0.0,
        le=7 * 86400,
        allow_inf_nan=False,
        description="Longest cooldown for repeat offences; an address is forgotten this long after its "
        "cooldown ends.",
    )
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="`Host` header names accepted besides the bound address (and localhost, 127.0.0.1, "
        "::1 on a loopback bind); `*` accepts any. Other hosts get 403 (DNS-rebinding protection).",
    )
    allowed_origins: list[str] = Field(
        default_factory=list,
        description="Browser origins (`https://app.example.com`) allowed besides the server's own; `*` "
        "allows any. Requests and WebSockets with another `Origin` get 403.",
    )

    @field_validator("host")
    @classmethod
    def _usable_host(cls, value: str) -> str:
        import ipaddress
        import re

        value = value.strip()
        if re.fullmatch(r"[0-9.]+|.*:.*", value):  # meant as an IP address: it must be one
            try:
                ipaddress.ip_address(value)
            except ValueError:
                raise ValueError(f"{value!r} is not a valid IP address") from None
        elif not re.fullmatch(
            r"(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*",
            value,
        ):
            raise ValueError(f"{value!r} is not an IP address or host name")
        return value

    @field_validator("token")
    @classmethod
    def _token_not_empty(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("an empty token would turn authentication off; leave it unset for no token")
        return value


class WebRTCTransportConfig(_Strict):
    """Browser WebRTC (pipecat's SmallWebRTC, aiortc): the default transport."""

    ice_servers: list[str] = Field(
        default_factory=list,
        description="STUN/TURN URLs; none are needed on localhost or a LAN.",
    )
    open_browser: bool = Field(False, description="Open the page in the default browser when ready.")


class WebSocketTransportConfig(_Strict):
    """WebSocket server with pipecat's protobuf serializer (see docs/transports.md for the protocol)."""

    path: str = Field(
        "/ws",
        pattern=r"^/[A-Za-z0-9._~/-]*$",
        description="Endpoint path on the bot's server (starts with /).",
    )
    packet_ms: Literal[10, 20, 40] = Field(20, description="Duration of each bot audio packet sent.")


class DailyTransportConfig(_Strict):
    """Daily room: join by URL (and token), or create a room with DAILY_API_KEY."""

    room_url: str | None = Field(None, description="Room to join (default: env DAILY_ROOM_URL, else create).")
    token: str | None = Field(None, description="Meeting token for private rooms (default: env DAILY_TOKEN).")
    api_key_env: str = Field("DAILY_API_KEY", description="Environment variable holding the Daily API key.")
    api_url: str = Field("https://api.daily.co/v1", description="Daily REST API root.")
    bot_name: str = Field("Voxtral bot", description="Name shown to the other participants.")
    room_expiry_secs: int = Field(3600, ge=60, le=86400, description="Lifetime of a room the bot creates.")
    join_timeout_secs: float = Field(10.0, gt=0.0, le=120.0, description="Give up joining after this long.")


class LocalTransportConfig(_Strict):
    """The machine's microphone and speaker through PyAudio."""

    input_device: str | None = Field(
        None, description="Input device index or name substring (None: system default)."
    )
    output_device: str | None = Field(
        None, description="Output device index or name substring (None: system default)."
    )


class TransportConfig(_Strict):
    """Which transport carries the audio; the stages never know which one it is."""

    kind: Literal["webrtc", "websocket", "daily", "local", "file"] = Field(
        "webrtc",
        description="Transport to use (the CLI picks file when --input is given without --transport).",
    )
    rtvi: bool = Field(
        True,
        description="pipecat's RTVI protocol on the webrtc, websocket and daily transports (what pipecat's "
        "client SDKs and prebuilt UI speak: bot-ready, bot text, transcripts, speaking state, metrics).",
    )
    server: ServerConfig = Field(default_factory=ServerConfig)
    webrtc: WebRTCTransportConfig = Field(default_factory=WebRTCTransportConfig)
    websocket: WebSocketTransportConfig = Field(default_factory=WebSocketTransportConfig)
    daily: DailyTransportConfig = Field(default_factory=DailyTransportConfig)
    local: LocalTransportConfig = Field(default_factory=LocalTransportConfig)
    file: FileTransportConfig = Field(default_factory=FileTransportConfig)

    @model_validator(mode="before")
    @classmethod
    def _file_when_only_an_input_is_given(cls, data: Any) -> Any:
        """An input WAV with no kind named means the file transport (as the CLI's --input does)."""
        if isinstance(data, dict) and "kind" not in data:
            file = data.get("file")
            given = file.get("input") if isinstance(file, dict) else getattr(file, "input", None)
            if given:
                data = {**data, "kind": "file"}
        return data


class AudioConfig(_Strict):
    """Pipeline sample rates."""

    in_sample_rate: Literal[16000] = Field(16000, description="Voxtral and Silero hear 16 kHz.")
    out_sample_rate: int = Field(24000, ge=8000, le=48000, description="Rate of the bot audio sent out.")


class PipelineConfig(_Strict):
    """The whole pipeline."""

    transport: TransportConfig = Field(default_factory=TransportConfig)
    audio: AudioConfig = Field(default_factory=AudioConfig)
    turns: TurnConfig = Field(default_factory=TurnConfig)
    voxtral: VoxtralConfig = Field(default_factory=VoxtralConfig)
    chunker: ChunkerConfig = Field(default_factory=ChunkerConfig)
    kokoro: KokoroConfig = Field(default_factory=KokoroConfig)
    tts: str = Field(
        "kokoro",
        description="The TTS that speaks: a role of voxtral_pipeline.session.TTS_ROLES (kokoro).",
    )
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    language: LanguageCode = Field(
        "en",
        description="Session language (en, es, fr, hi, it, pt: where Voxtral's and Kokoro's meet): sets "
        "voxtral.language and kokoro.language (voice and G2P) unless those are set; see docs/languages.md.",
    )

    @model_validator(mode="before")
    @classmethod
    def _one_session_language(cls, data: Any) -> Any:
        """The top-level language flows into the stages that did not choose their own."""
        if not isinstance(data, dict) or "language" not in data:
            return data
        data = dict(data)
        for section in ("voxtral", "kokoro"):
            sub = data.get(section) or {}
            if isinstance(sub, BaseModel):
                if "language" in sub.model_fields_set:
                    continue
                sub = sub.model_dump(exclude_defaults=True)  # the language's defaults apply again
            if isinstance(sub, dict) and "language" not in sub:
                data[section] = {**sub, "language": data["language"]}
        return data


def _format_error(error: ValidationError) -> str:
    parts = []
    for e in error.errors():
        where = ".".join(str(p) for p in e["loc"]) or "config"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
            allowed = _allowed_keys(e["loc"][:-1])
            if allowed:
                msg += f" (allowed: {', '.join(allowed)})"
        elif "input" in e and not isinstance(e["input"], dict):
            msg += f" (got {e['input']!r})"
        parts.append(f"{where}: {msg}")
    return "invalid config: " + "; ".join(parts)


def _allowed_keys(loc: tuple) -> list[str]:
    model: type[BaseModel] = PipelineConfig
    for part in loc:
        field = model.model_fields.get(str(part))
        if (
            field is None
            or not isinstance(field.annotation, type)
            or not issubclass(field.annotation, BaseModel)
        ):
            return []
        model = field.annotation
    return sorted(model.model_fields)


def _read_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {e.start}: {e.reason})") from None
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror or e}") from None
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        elif path.suffix == ".json":
            data = json.loads(text)
        else:
            data = tomllib.loads(text)
    except Exception as e:  # the parsers' own messages say where the syntax broke
        raise ConfigError(f"cannot parse config file {path}: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a table of settings at its top level")
    return data


def _set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = data
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"invalid config: {dotted}: {key} is not a section")
        node = child
    node[keys[-1]] = value


def _env_overrides(environ: dict[str, str]) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for name, value in environ.items():
        if name.startswith(ENV_PREFIX):
            dotted = name[len(ENV_PREFIX) :].lower().replace("__", ".")
            _set_path(data, dotted, value)
    return data


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def load_config(
    path: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
) -> PipelineConfig:
    """Build the configuration from a file, the environment and dotted-key overrides.

    Args:
        path: TOML (default), YAML or JSON file, or None for the defaults.
        overrides: ``{"voxtral.model": "dummy:tiny", ...}``; these win over everything else.
        environ: Environment to read ``VOXTRAL_PIPELINE__*`` variables from (``os.environ`` by default).

    Raises:
        ConfigError: with a one-line message naming the bad field and what it accepts.
    """
    data: dict[str, Any] = _read_file(Path(path)) if path else {}
    data = _merge(data, _env_overrides(dict(os.environ if environ is None else environ)))
    cli: dict[str, Any] = {}
    for dotted, value in (overrides or {}).items():
        if value is not None:
            _set_path(cli, dotted, value)
    data = _merge(data, cli)
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_error(e)) from None


def _type_name(annotation: Any) -> str:
    text = getattr(annotation, "__name__", None) if isinstance(annotation, type) else None
    text = text or str(annotation).replace("typing.", "").replace("pathlib.", "")
    return text.replace("Literal", "one of ").replace("NoneType", "None").replace(" | ", " or ")


def config_reference() -> str:
    """Markdown reference of every config key, generated from the models so it cannot drift."""
    lines = [
        "# Configuration reference",
        "",
        "Generated from `voxtral_pipeline/config.py` (`python -m voxtral_pipeline.config > "
        "docs/configuration.md`); a test keeps it in sync.",
        "",
        "Layers, later ones winning: the config file (TOML, YAML or JSON), environment variables "
        f"`{ENV_PREFIX}SECTION__KEY=value`, then CLI flags and `--set section.key=value`.",
        "",
    ]

    def walk(model: type[BaseModel], prefix: str) -> None:
        rows, subs = [], []
        for name, field in model.model_fields.items():
            ann = field.annotation
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                subs.append((ann, f"{prefix}{name}."))
                continue
            default = field.get_default(call_default_factory=True)
            desc = (field.description or "").replace("|", "\\|")
            rows.append(f"| `{prefix}{name}` | {_type_name(ann)} | `{default!r}` | {desc} |")
        if rows:
            title = prefix.rstrip(".") or "(top level)"
            doc = (model.__doc__ or "").strip().splitlines()[0]
            lines.extend(
                [f"## `{title}`", "", doc, "", "| key | type | default | meaning |", "|---|---|---|---|"]
            )
            lines.extend(rows)
            lines.append("")
        for sub, sub_prefix in subs:
            walk(sub, sub_prefix)

    walk(PipelineConfig, "")
    return "\n".join(lines)


if __name__ == "__main__":
    print(config_reference())
