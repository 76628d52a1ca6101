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

Failures stay with the request that hit them: a request that raises (the model failing mid-answer)
fails its own future only, and its session's cache (which ``generate()`` may have half written) is
dropped; an out-of-memory error drops every session's cache (they are only caches: the next turn
prefills again) and empties the CUDA allocator's cache, so the next request has room. A session
released while its request is still running keeps no cache behind.

The roles live beside this module: :mod:`.kv_store` (per-session caches), :mod:`.prompt` (token
ids and mel features), :mod:`.generate` (the generate loop), :mod:`.tokens` (control-token ids).
"""

from __future__ import annotations

import itertools
import threading
import time
from concurrent.futures import Future
from typing import Any

import torch
from loguru import logger

from voxtral_pipeline.engine.generate import Generator
from voxtral_pipeline.engine.kv_store import SessionKVStore
from voxtral_pipeline.engine.prompt import PromptBuilder
from voxtral_pipeline.engine.requests import (
    BACKGROUND,
    NEW_ANSWER,
    RESUMED_ANSWER,
    EngineEvent,
    EngineRequest,
    Job,
)
from voxtral_pipeline.engine.tokens import SpecialTokens
from voxtral_pipeline.models.voxtral import VoxtralBundle

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
        self.tokens = SpecialTokens.from_tokenizer(bundle.tokenizer)
        self.kv = SessionKVStore(
            bundle.model.config,
            self.tokens,
            enabled=kv_cache,
            max_tokens=kv_cache_max_tokens,
            max_sessions=kv_cache_sessions,
            static=static_cache,
        )
        self.prompts = PromptBuilder(bundle, self.tokens, mel_on_device=mel_on_device)
        self.generator = Generator(bundle, self.kv, self.prompts, compile=compile and static_cache)
        self.warmed_up = False
        self.events: list[EngineEvent] = []
        self._max_log = max_log
        self._queue: list[Job] = []
        self._running: Job | None = None
        self._cond = threading.Condition()
        self._seq = itertools.count()
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
        klass = NEW_ANSWER if request.kind == "answer" else BACKGROUND
        job = Job(request, future, next(self._seq), klass, time.perf_counter())
        with self._cond:
            if self._closed:
                raise RuntimeError("the Voxtral engine is closed")
            self.kv.unreleased(request.session_id)
            self._queue.append(job)
            self._cond.notify_all()
        return future

    def release_session(self, session_id: str) -> None:
        """Forget a session's KV cache (its stage is gone), now and after its last request ends."""
        with self._cond:
            jobs = [*self._queue, *([self._running] if self._running else [])]
            pending = any(j.request.session_id == session_id for j in jobs)
            self.kv.release(session_id, pending=pending)

    @property
    def kv_cache(self) -> bool:
        return self.kv.enabled

    @property
    def cached_sessions(self) -> list[str]:
        """Sessions whose KV caches are kept (at most ``kv_cache_sessions``)."""
        return self.kv.sessions

    def cache_bytes(self) -> int:
        """Memory held by every session's KV cache (tensor storage), for accounting and soak tests."""
        return self.kv.bytes()

    def cached_tokens(self, session_id: str) -> int:
        """Tokens currently held in a session's KV cache."""
        return self.kv.tokens(session_id)

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

    def answer_waiting(self, excluding: Job | None = None) -> bool:
        """Whether an answer (a user waiting) is queued."""
        with self._cond:
            return any(j.klass != BACKGROUND and j is not excluding for j in self._queue)

    def _should_yield(self, job: Job, steps: int) -> bool:
        """Background work gives way at once to any answer; an answer after a quantum."""
        if job.klass != BACKGROUND and steps < self.quantum_tokens:
            return False
        return self.answer_waiting(job)

    def _next(self) -> Job | None:
        with self._cond:
            while not self._queue and not self._closed:
                self._cond.wait()
            if self._closed:
                return None
            job = min(self._queue, key=lambda j: (j.klass, j.seq))
            self._queue.remove(job)
            self._running = job
            return job

    def _log(self, job: Job, event: str) -> None:
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
                if not requeue and not any(
                    j.request.session_id == job.request.session_id for j in self._queue
                ):
                    self.kv.unreleased(job.request.session_id)
                if requeue:
                    if job.klass == BACKGROUND:  # preempted background work starts over
                        job.restart()
                    else:
                        job.klass = RESUMED_ANSWER
                    job.seq = next(self._seq)
                    self._queue.append(job)

    def _run(self, job: Job) -> bool:
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
            self.generator.refresh(job)
            self._log(job, "done")
            if not job.future.done():
                job.future.set_result(job.result)
            return False
        yielded = self.generator.slice(job, self._should_yield)
        if yielded:
            job.result.preemptions += 1
            self._log(job, "yield")
            return True
        job.result.cancelled = req.cancel.is_set()
        self._log(job, "cancelled" if job.result.cancelled else "done")
        self._finish(job)
        return False

    def _after_error(self, job: Job, error: BaseException) -> None:
        """Free what a failed request may have left: its session's cache, or every cache on OOM."""
        own = self.kv.drop(job.request.session_id)  # generate() may have half written it
        if isinstance(error, torch.OutOfMemoryError):
            dropped = self.kv.clear() + own
            logger.warning(
                f"Voxtral engine: out of memory ({job.request.kind}); dropped the KV caches "
                f"of {dropped} session(s) (their next turns prefill again)"
            )
            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    def _finish(self, job: Job) -> None:
        r = job.result
        if job.streamer is not None:
            job.streamer.finish()
        r.text = self.bundle.decode(r.token_ids)
        if r.first_token_s is not None and r.completion_tokens > 1:
            decode_s = r.generate_s - r.first_token_s
            r.decode_tokens_per_s = (r.completion_tokens - 1) / decode_s if decode_s > 0 else None
        if not job.future.done():
            job.future.set_result(r)
