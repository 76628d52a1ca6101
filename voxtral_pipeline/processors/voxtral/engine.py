"""The shared Voxtral engine: one model, one worker thread, every session in the process.

A :class:`VoxtralEngine` owns the loaded :class:`~voxtral_pipeline.models.voxtral.VoxtralBundle`
and runs every request on ONE worker thread (the GPU does one thing at a time; batching decode
steps of unrelated sessions is what vLLM is for). Fairness comes from the queue and from
preemption at decode-step granularity:

* Requests are ordered by class, then by arrival: a new answer (a user waiting for a first token)
  beats a resumed answer, which beats background work (transcripts, cache refreshes).
* A running answer yields after ``quantum_tokens`` tokens whenever another answer is waiting: its
  ``generate()`` stops (a stopping criterion checked at every decode step), the waiting request
  runs, and the yielded answer resumes later from its KV cache (prefilling one token). So a new
  turn's first token waits at most one quantum of another session's decode, never a whole answer.
* Background work (transcripts, refreshes, warm-up) yields at its next decode step whenever an
  answer is waiting, and starts over later.

Each session keeps its KV cache between turns: the new prompt is compared with the cached ids,
the cache is cropped to the common prefix (never inside an audio block), and only the uncached
suffix is prefilled, with mel features computed only for the audio in that suffix. Caches are
bounded per session (cropped to ``kv_cache_max_tokens``) and across sessions (least recently used
evicted past ``kv_cache_sessions``).

Failures stay with the request that hit them: a request that raises (the model failing mid-answer)
fails its own future only, and its session's cache (which ``generate()`` may have half written) is
dropped; an out-of-memory error drops every session's cache (they are only caches: the next turn
prefills again) and empties the CUDA allocator's cache, so the next request has room. A session
released while its request is still running keeps no cache behind.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from loguru import logger
from transformers.generation import StoppingCriteria, StoppingCriteriaList

from voxtral_pipeline.models.tekken import AUDIO_TOKEN_ID
from voxtral_pipeline.models.voxtral import (
    AUDIO_TOKENS_PER_CHUNK,
    SAMPLE_RATE,
    TokenStreamer,
    VoxtralBundle,
    sampling_kwargs,
)

BEGIN_AUDIO_TOKEN_ID = 25
INST_TOKEN_ID = 3
MAX_SOURCE_POSITIONS = 3000
SAMPLES_PER_CHUNK = 30 * SAMPLE_RATE

JobKind = Literal["answer", "transcribe", "refresh", "warmup"]
# Queue classes: lower runs first.
_NEW_ANSWER, _RESUMED_ANSWER, _BACKGROUND = 0, 1, 2


@dataclass
class EngineResult:
    """What one request produced.

    Parameters:
        token_ids: Generated ids (EOS included when the model stopped by itself).
        text: Their visible text.
        prompt_tokens: Prompt length, audio tokens included.
        audio_tokens: ``[AUDIO]`` tokens in the prompt.
        prefill_tokens: Prompt tokens actually computed (not taken from the KV cache), all slices.
        cached_tokens: Prompt tokens reused from the session's KV cache on the first slice.
        generate_calls: ``generate()`` calls (1, plus one per resumption after yielding).
        preemptions: Times this answer yielded the engine to another session.
        cancelled: Stopped by its cancel event.
        queued_s: From submission to the start of its first slice.
        prepare_s: Tokenizing and mel features (first slice).
        first_token_s: From the start of the first ``generate()`` to the first token.
        generate_s: Time spent in ``generate()`` (all slices).
        decode_tokens_per_s: Decode rate after the first token (time in ``generate()`` only).
    """

    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    prompt_tokens: int = 0
    audio_tokens: int = 0
    prefill_tokens: int = 0
    cached_tokens: int = 0
    generate_calls: int = 0
    preemptions: int = 0
    cancelled: bool = False
    queued_s: float = 0.0
    prepare_s: float = 0.0
    first_token_s: float | None = None
    generate_s: float = 0.0
    decode_tokens_per_s: float | None = None

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)


@dataclass
class EngineRequest:
    """One unit of work for the engine.

    Parameters:
        session_id: Whose KV cache to use (answers and refreshes).
        kind: ``answer`` (chat, streamed), ``transcribe`` (transcription mode), ``refresh``
            (prefill the session's next context while idle), ``warmup``.
        conversation: Chat messages (answer, refresh, warmup).
        audio: Float32 16 kHz samples (transcribe).
        on_delta: ``on_delta(text, n_tokens)``, called on the engine thread for every token.
        cancel: Set from any thread to stop within one decode step.
        max_new_tokens, temperature, top_p, seed: Generation settings.
        min_new_tokens: Do not stop at EOS before this many tokens (benchmarks).
        language: Transcription language (None: let the model decide).
        tools: Functions offered to the model (OpenAI/Mistral format), rendered by the tokenizer.
    """

    session_id: str
    kind: JobKind = "answer"
    conversation: list[dict[str, Any]] | None = None
    audio: np.ndarray | None = None
    on_delta: Callable[[str, int], None] | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    min_new_tokens: int = 0
    language: str | None = "en"
    tools: list[dict[str, Any]] | None = None


@dataclass
class _Job:
    request: EngineRequest
    future: Future
    seq: int
    klass: int
    submitted_at: float
    result: EngineResult = field(default_factory=EngineResult)
    streamer: _JobStreamer | None = None
    # Set on the first slice and kept for resumptions.
    prompt_ids: list[int] | None = None
    audios: list[np.ndarray] | None = None
    started: bool = False
    slice_t0: float = 0.0


class _JobStreamer(TokenStreamer):
    """A :class:`TokenStreamer` that survives several ``generate()`` slices of one answer.

    ``generate()`` calls ``end()`` at the end of every slice; a slice boundary must not flush an
    incomplete UTF-8 tail, so ``end()`` does nothing here and :meth:`finish` flushes at the end.
    """

    def begin_slice(self) -> None:
        self._prompt_seen = False

    def end(self) -> None:
        pass

    def finish(self) -> None:
        TokenStreamer.end(self)


class _StepCheck(StoppingCriteria):
    """Stops ``generate()`` on cancellation, or to yield to a waiting answer after a quantum."""

    def __init__(self, engine: VoxtralEngine, job: _Job):
        self.engine = engine
        self.job = job
        self.steps = 0
        self.yielded = False

    def __call__(
        self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any
    ) -> torch.BoolTensor:
        self.steps += 1
        stop = self.job.request.cancel.is_set()
        if not stop:
            if self.job.klass == _BACKGROUND:
                # Background work gives way at once to any answer (and starts over later).
                stop = self.yielded = self.engine._answer_waiting(self.job)
            elif self.steps >= self.engine.quantum_tokens and self.engine._answer_waiting(self.job):
                stop = self.yielded = True
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)


@dataclass
class _SessionCache:
    ids: list[int]
    cache: Any


@dataclass
class EngineEvent:
    """One entry of the engine's log (for tests and debugging): what ran, for whom, how it ended."""

    kind: str
    session_id: str
    event: Literal["start", "yield", "resume", "done", "cancelled", "error"]
    tokens: int
    at: float


_ENGINES_LOCK = threading.Lock()


class VoxtralEngine:
    """Shared model engine: weights, processor, device, per-session KV caches, one worker thread.

    Use :meth:`for_bundle` to get the process-wide engine of a loaded model; every stage that
    shares the bundle shares the engine (and its queue).
    """

    def __init__(
        self,
        bundle: VoxtralBundle,
        *,
        quantum_tokens: int = 8,
        kv_cache: bool = True,
        kv_cache_max_tokens: int = 16384,
        kv_cache_sessions: int = 16,
        mel_on_device: bool = True,
        static_cache: bool = False,
        compile: bool = False,
        max_log: int = 2000,
    ):
        self.bundle = bundle
        self.quantum_tokens = max(1, quantum_tokens)
        self.kv_cache = kv_cache
        self.kv_cache_max_tokens = kv_cache_max_tokens
        self.kv_cache_sessions = kv_cache_sessions
        self.mel_device = bundle.device if mel_on_device and bundle.device.startswith("cuda") else None
        self.static_cache = static_cache
        self.compile = compile and static_cache
        self.warmed_up = False
        self.events: list[EngineEvent] = []
        self._max_log = max_log
        self._caches: OrderedDict[str, _SessionCache] = OrderedDict()
        self._queue: list[_Job] = []
        self._running: _Job | None = None
        self._cond = threading.Condition()
        self._seq = itertools.count()
        # Sessions released while one of their requests was queued or running: whatever that
        # request leaves must not be cached again (it would outlive its session).
        self._released: set[str] = set()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="voxtral-engine", daemon=True)
        self._thread.start()

    @classmethod
    def for_bundle(cls, bundle: VoxtralBundle, **settings: Any) -> VoxtralEngine:
        """The engine of ``bundle``, created on first use (later settings are ignored)."""
        with _ENGINES_LOCK:
            engine = getattr(bundle, "_shared_engine", None)
            if engine is None or engine._closed:
                engine = cls(bundle, **settings)
                bundle._shared_engine = engine  # type: ignore[attr-defined]
            return engine

    # ---------------------------------------------------------------------------------------
    # Public API (any thread)

    def submit(self, request: EngineRequest) -> Future:
        """Queue a request; the future resolves to an :class:`EngineResult`."""
        future: Future = Future()
        klass = _NEW_ANSWER if request.kind == "answer" else _BACKGROUND
        job = _Job(request, future, next(self._seq), klass, time.perf_counter())
        with self._cond:
            if self._closed:
                raise RuntimeError("the Voxtral engine is closed")
            self._released.discard(request.session_id)
            self._queue.append(job)
            self._cond.notify_all()
        return future

    def release_session(self, session_id: str) -> None:
        """Forget a session's KV cache (its stage is gone), now and after its last request ends."""
        with self._cond:
            self._caches.pop(session_id, None)
            jobs = [*self._queue, *([self._running] if self._running else [])]
            if any(j.request.session_id == session_id for j in jobs):
                self._released.add(session_id)

    @property
    def cached_sessions(self) -> list[str]:
        """Sessions whose KV caches are kept (at most ``kv_cache_sessions``)."""
        with self._cond:
            return list(self._caches)

    def cache_bytes(self) -> int:
        """Memory held by every session's KV cache (tensor storage), for accounting and soak tests."""
        with self._cond:
            caches = [entry.cache for entry in self._caches.values()]
        return sum(_storage_bytes(cache) for cache in caches)

    def cached_tokens(self, session_id: str) -> int:
        """Tokens currently held in a session's KV cache."""
        with self._cond:
            entry = self._caches.get(session_id)
            return 0 if entry is None else len(entry.ids)

    @property
    def busy(self) -> bool:
        with self._cond:
            return self._running is not None or bool(self._queue)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            for job in self._queue:
                job.request.cancel.set()
                if not job.future.cancel() and not job.future.done():  # a yielded answer, running
                    job.result.cancelled = True
                    job.future.set_result(job.result)
            self._queue.clear()
            if self._running is not None:
                self._running.request.cancel.set()
            self._cond.notify_all()

    # ---------------------------------------------------------------------------------------
    # Worker thread

    def _answer_waiting(self, job: _Job) -> bool:
        with self._cond:
            return any(j.klass != _BACKGROUND and j is not job for j in self._queue)

    def _next(self) -> _Job | None:
        with self._cond:
            while not self._queue and not self._closed:
                self._cond.wait()
            if self._closed:
                return None
            job = min(self._queue, key=lambda j: (j.klass, j.seq))
            self._queue.remove(job)
            self._running = job
            return job

    def _log(self, job: _Job, event: str) -> None:
        self.events.append(
            EngineEvent(
                job.request.kind, job.request.session_id, event, job.result.completion_tokens, time.time()
            )  # type: ignore[arg-type]
        )
        if len(self.events) > self._max_log:
            del self.events[: len(self.events) - self._max_log]

    def _loop(self) -> None:
        while (job := self._next()) is not None:
            try:
                requeue = self._run(job)
            except BaseException as e:  # the engine thread must survive any request
                requeue = False
                self._log(job, "error")
                logger.opt(exception=e).debug(f"Voxtral engine: {job.request.kind} failed")
                self._after_error(job, e)
                if not job.future.done():
                    job.future.set_exception(e)
            with self._cond:
                self._running = None
                if (
                    self._released
                    and not any(j.request.session_id == job.request.session_id for j in self._queue)
                    and not requeue
                ):
                    self._released.discard(job.request.session_id)
                if requeue:
                    if job.klass == _BACKGROUND:  # preempted background work starts over
                        job.started = False
                        job.result = EngineResult()
                        job.streamer = None
                    else:
                        job.klass = _RESUMED_ANSWER
                    job.seq = next(self._seq)
                    self._queue.append(job)

    def _run(self, job: _Job) -> bool:
        """Run one slice of a job; True when it yielded and must be queued again."""
        req = job.request
        # Claim the future: once running, its submitter can no longer cancel it (a cancelled
        # asyncio task awaiting it only stops waiting), so a result can always be set. One
        # cancelled while still queued is skipped.
        if not job.future.running() and not job.future.set_running_or_notify_cancel():
            job.result.cancelled = True
            self._log(job, "cancelled")
            return False
        if req.cancel.is_set():
            job.result.cancelled = True
            self._log(job, "cancelled")
            self._finish(job)
            return False
        self._log(job, "resume" if job.started else "start")
        if req.kind == "refresh":
            self._refresh(job)
            self._log(job, "done")
            if not job.future.done():
                job.future.set_result(job.result)
            return False
        yielded = self._generate_slice(job)
        if yielded:
            job.result.preemptions += 1
            self._log(job, "yield")
            return True
        job.result.cancelled = req.cancel.is_set()
        self._log(job, "cancelled" if job.result.cancelled else "done")
        self._finish(job)
        return False

    def _after_error(self, job: _Job, error: BaseException) -> None:
        """Free what a failed request may have left: its session's cache, or every cache on OOM."""
        with self._cond:
            own = self._caches.pop(job.request.session_id, None)  # generate() may have half written it
            if isinstance(error, torch.OutOfMemoryError):
                dropped = len(self._caches) + (own is not None)
                self._caches.clear()
                logger.warning(
                    f"Voxtral engine: out of memory ({job.request.kind}); dropped the KV caches "
                    f"of {dropped} session(s) (their next turns prefill again)"
                )
        if isinstance(error, torch.OutOfMemoryError) and torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _finish(self, job: _Job) -> None:
        r = job.result
        if job.streamer is not None:
            job.streamer.finish()
        r.text = self.bundle.decode(r.token_ids)
        if r.first_token_s is not None and r.completion_tokens > 1:
            decode_s = r.generate_s - r.first_token_s
            r.decode_tokens_per_s = (r.completion_tokens - 1) / decode_s if decode_s > 0 else None
        if not job.future.done():
            job.future.set_result(r)

    # ---------------------------------------------------------------------------------------
    # Tokenizing, features, caches

    def _tokenize_chat(
        self, conversation: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None
    ) -> tuple[list[int], list[np.ndarray]]:
        """Token ids and (30-s padded) audio arrays of a chat, without computing any mel features."""
        enc = self.bundle.tokenizer.apply_chat_template(
            [conversation], tools=tools or None, tokenize=True, return_dict=True, return_tensors=None
        )
        audios = enc.get("audio")
        return list(enc["input_ids"][0]), [np.asarray(a, dtype=np.float32) for a in (audios or [])]

    def _features(self, audios: list[np.ndarray]) -> torch.Tensor | None:
        """Mel features of audio arrays, (n_chunks, 128, 3000), on the model's device and dtype."""
        if not audios:
            return None
        kwargs: dict[str, Any] = {
            "sampling_rate": SAMPLE_RATE,
            "padding": True,
            "truncation": False,
            "pad_to_multiple_of": SAMPLES_PER_CHUNK,
            "return_tensors": "pt",
        }
        if self.mel_device is not None:
            kwargs["device"] = self.mel_device
        feats = self.bundle.processor._retrieve_input_features(audios, MAX_SOURCE_POSITIONS, **kwargs)
        return feats.to(self.bundle.device, dtype=self.bundle.dtype)

    def _suffix_audios(self, audios: list[np.ndarray], suffix_ids: list[int]) -> list[np.ndarray]:
        """The audio arrays whose tokens lie in the uncached suffix (the last ones)."""
        chunks = sum(1 for t in suffix_ids if t == AUDIO_TOKEN_ID) // AUDIO_TOKENS_PER_CHUNK
        picked: list[np.ndarray] = []
        n = 0
        for audio in reversed(audios):
            if n >= chunks:
                break
            picked.insert(0, audio)
            n += max(1, -(-len(audio) // SAMPLES_PER_CHUNK))
        return picked

    def _new_cache(self, needed: int) -> Any:
        from transformers import DynamicCache, StaticCache

        if self.static_cache and needed <= self.kv_cache_max_tokens:
            return StaticCache(config=self.bundle.model.config, max_cache_len=self.kv_cache_max_tokens)
        return DynamicCache(config=self.bundle.model.config)

    def _take_cache(self, session_id: str | None, ids: list[int], max_new: int = 0) -> tuple[Any, int]:
        """The session's cache cropped to the common prefix with ``ids`` (never inside audio)."""
        needed = len(ids) + max_new
        with self._cond:  # release_session() runs on other threads
            entry = self._caches.get(session_id) if (self.kv_cache and session_id) else None
            if entry is not None and _is_static(entry.cache) and needed > self.kv_cache_max_tokens:
                del self._caches[session_id]  # a preallocated cache cannot grow: start a dynamic one
                entry = None
            if entry is not None:
                self._caches.move_to_end(session_id)
        if entry is None:
            return self._new_cache(needed), 0
        cached = entry.ids
        p = 0
        limit = min(len(cached), len(ids))
        while p < limit and cached[p] == ids[p]:
            p += 1
        # Never split an audio block: its features are encoded in one piece.
        while (
            0 < p < len(ids)
            and ids[p] == AUDIO_TOKEN_ID
            and ids[p - 1] in (AUDIO_TOKEN_ID, BEGIN_AUDIO_TOKEN_ID)
        ):
            p -= 1
        if p >= len(ids):
            p = len(ids) - 1  # at least one new token, for the logits
        _crop(entry.cache, p)
        return entry.cache, p

    def _keep_cache(self, session_id: str | None, ids: list[int], cache: Any) -> None:
        if not (self.kv_cache and session_id):
            return
        n = _seq_length(cache)
        ids = ids[:n]
        if n > self.kv_cache_max_tokens:  # keep the (reusable) beginning only
            _crop(cache, self.kv_cache_max_tokens)
            ids = ids[: self.kv_cache_max_tokens]
        with self._cond:  # release_session() runs on other threads
            if session_id in self._released:
                self._caches.pop(session_id, None)
                return
            self._caches[session_id] = _SessionCache(ids, cache)
            self._caches.move_to_end(session_id)
            while len(self._caches) > self.kv_cache_sessions:
                evicted, _ = self._caches.popitem(last=False)
                logger.debug(f"Voxtral engine: evicted the KV cache of session {evicted}")

    # ---------------------------------------------------------------------------------------
    # Running

    def _generate_slice(self, job: _Job) -> bool:
        req, r = job.request, job.result
        b = self.bundle
        t0 = time.perf_counter()
        if not job.started:
            job.started = True
            r.queued_s = t0 - job.submitted_at
            if req.kind == "transcribe":
                job.prompt_ids, job.audios = self._transcription_prompt(req)
            else:
                job.prompt_ids, job.audios = self._tokenize_chat(req.conversation or [], req.tools)
            r.prompt_tokens = len(job.prompt_ids)
            r.audio_tokens = sum(1 for t in job.prompt_ids if t == AUDIO_TOKEN_ID)

            def on_delta(text: str, n: int) -> None:
                if n and r.first_token_s is None:
                    r.first_token_s = time.perf_counter() - job.slice_t0 + r.generate_s
                if req.on_delta is not None:
                    req.on_delta(text, n)

            job.streamer = _JobStreamer(b.tokenizer, on_delta)
        assert job.prompt_ids is not None and job.streamer is not None
        ids = job.prompt_ids + r.token_ids
        session = req.session_id if req.kind == "answer" else None
        remaining = req.max_new_tokens - r.completion_tokens
        cache, p = self._take_cache(session, ids, remaining)
        feats = self._features(self._suffix_audios(job.audios or [], ids[p:]))
        if r.generate_calls == 0:
            r.cached_tokens = p
            r.prepare_s = time.perf_counter() - t0
        r.prefill_tokens += len(ids) - p
        input_ids = torch.tensor([ids], device=b.device)
        check = _StepCheck(self, job)
        extra: dict[str, Any] = {}
        if _is_static(cache):
            extra["disable_compile"] = not self.compile
        if b.model.generation_config.pad_token_id is None:
            extra["pad_token_id"] = b.tokenizer.pad_token_id
        if req.min_new_tokens > r.completion_tokens:
            extra["min_new_tokens"] = req.min_new_tokens - r.completion_tokens
        if feats is not None:
            extra["input_features"] = feats
        sampling = (
            {"do_sample": False} if req.kind == "transcribe" else sampling_kwargs(req.temperature, req.top_p)
        )
        job.streamer.begin_slice()
        before = r.completion_tokens
        job.slice_t0 = time.perf_counter()
        with b.lock, torch.inference_mode():
            if req.seed is not None and r.generate_calls == 0:
                torch.manual_seed(req.seed)
            r.generate_calls += 1
            out = b.model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                past_key_values=cache,
                streamer=job.streamer,
                stopping_criteria=StoppingCriteriaList([check]),
                max_new_tokens=max(1, remaining),
                return_dict_in_generate=True,
                **sampling,
                **extra,
            )
        r.generate_s += time.perf_counter() - job.slice_t0
        new = out.sequences[0, len(ids) :].tolist()
        r.token_ids.extend(new)
        self._keep_cache(session, ids + new, out.past_key_values)
        done = (
            req.cancel.is_set()
            or r.completion_tokens >= req.max_new_tokens
            or (new and new[-1] == b.eos_token_id)
            or len(new) == 0
            or r.completion_tokens == before
        )
        return check.yielded and not done

    def _transcription_prompt(self, req: EngineRequest) -> tuple[list[int], list[np.ndarray]]:
        audio = np.asarray(req.audio, dtype=np.float32).reshape(-1)
        enc = self.bundle.processor.apply_transcription_request(
            audio=audio,
            model_id=self.bundle.spec,
            language=req.language,
            sampling_rate=SAMPLE_RATE,
            format=["wav"],
        )
        ids = enc["input_ids"][0].tolist()
        padded = np.zeros(max(1, -(-len(audio) // SAMPLES_PER_CHUNK)) * SAMPLES_PER_CHUNK, np.float32)
        padded[: len(audio)] = audio
        return ids, [padded]

    def _refresh(self, job: _Job) -> None:
        """Prefill the session's next context (everything before the next user turn) while idle."""
        req, r = job.request, job.result
        b = self.bundle
        probe = [*(req.conversation or []), {"role": "user", "content": [{"type": "text", "text": "."}]}]
        ids, audios = self._tokenize_chat(probe, req.tools)
        # The next turn's prompt shares everything before the last [INST].
        cut = len(ids) - 1 - ids[::-1].index(INST_TOKEN_ID)
        ids = ids[:cut]
        r.prompt_tokens = len(ids)
        cache, p = self._take_cache(req.session_id, ids + [INST_TOKEN_ID])
        p = min(p, len(ids))
        if p >= len(ids):
            return
        suffix = ids[p:]
        feats = self._features(self._suffix_audios(audios, suffix))
        with b.lock, torch.inference_mode():
            kwargs: dict[str, Any] = {}
            if feats is not None:
                kwargs["input_features"] = feats
            b.model(
                input_ids=torch.tensor([suffix], device=b.device),
                attention_mask=torch.ones((1, len(ids)), dtype=torch.long, device=b.device),
                past_key_values=cache,
                use_cache=True,
                **kwargs,
            )
        r.prefill_tokens = len(suffix)
        self._keep_cache(req.session_id, ids, cache)


def _is_static(cache: Any) -> bool:
    from transformers import StaticCache

    return isinstance(cache, StaticCache)


def _storage_bytes(cache: Any) -> int:
    """Bytes of the tensors behind a cache's layers (a cropped view still holds its storage)."""
    seen: set[int] = set()
    total = 0
    for layer in getattr(cache, "layers", []):
        for tensor in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if isinstance(tensor, torch.Tensor) and tensor.numel():
                storage = tensor.untyped_storage()
                if storage.data_ptr() not in seen:
                    seen.add(storage.data_ptr())
                    total += storage.nbytes()
    return total


def _seq_length(cache: Any) -> int:
    return int(cache.get_seq_length())


def _crop(cache: Any, length: int) -> None:
    """Keep the first ``length`` positions of a cache (a StaticCache is rewound in place)."""
    n = _seq_length(cache)
    if length >= n:
        return
    if _is_static(cache):
        for layer in cache.layers:  # stale slots past ``length`` are overwritten before use
            layer.cumulative_length.fill_(length)
    else:
        cache.crop(-(n - length))  # transformers 5.23: a negative count drops that many
