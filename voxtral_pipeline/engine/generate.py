"""The generate loop: one slice of an answer or a transcription, and the idle-time cache refresh.

A slice is one ``generate()`` call on the session's cache (cropped to the common prefix) with
the uncached suffix prefilled; a stopping criterion checked at every decode step stops it on
cancellation, or when the scheduler wants the engine for another request (preemption). An
answer resumes from its KV cache in a later slice; the streamer survives the slices.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from typing import Any

import torch
from transformers.generation import StoppingCriteria, StoppingCriteriaList

from voxtral_pipeline.engine.kv_store import SessionKVStore, is_static
from voxtral_pipeline.engine.prompt import PromptBuilder
from voxtral_pipeline.engine.requests import Job
from voxtral_pipeline.models.voxtral import TokenStreamer, VoxtralBundle, sampling_kwargs


class JobStreamer(TokenStreamer):
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
    """Stops ``generate()`` on cancellation, or when the scheduler wants the engine back."""

    def __init__(self, job: Job, should_yield: Callable[[Job, int], bool]):
        self.job = job
        self.should_yield = should_yield
        self.steps = 0
        self.yielded = False

    def __call__(
        self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any
    ) -> torch.BoolTensor:
        self.steps += 1
        stop = self.job.request.cancel.is_set()
        if not stop and self.should_yield(self.job, self.steps):
            stop = self.yielded = True
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)


def cache_kwarg(model: Any) -> str:
    """``cache`` where the model takes it (transformers 5.24 deprecates ``past_key_values``)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


class Generator:
    """Runs slices and refreshes on one model, with the KV store and prompt builder of its engine."""

    def __init__(
        self, bundle: VoxtralBundle, kv: SessionKVStore, prompts: PromptBuilder, *, compile: bool = False
    ):
        self.bundle = bundle
        self.kv = kv
        self.prompts = prompts
        self.compile = compile
        self._cache_kwarg = cache_kwarg(bundle.model)

    def slice(self, job: Job, should_yield: Callable[[Job, int], bool]) -> bool:
        """Run one slice of a job; True when it yielded and must be queued again."""
        req, r = job.request, job.result
        b = self.bundle
        t0 = time.perf_counter()
        if not job.started:
            job.started = True
            r.queued_s = t0 - job.submitted_at
            if req.kind == "transcribe":
                assert req.audio is not None
                job.prompt_ids, job.features = self.prompts.transcription(req.audio, req.language)
                job.audios = []
            else:
                job.prompt_ids, job.audios = self.prompts.chat(req.conversation or [], req.tools)
            r.prompt_tokens = len(job.prompt_ids)
            r.audio_tokens = self.prompts.audio_tokens(job.prompt_ids)

            def on_delta(text: str, n: int) -> None:
                if n and not job.slice_token_seen:  # the slice's prefill (and one decode step) is done
                    job.slice_token_seen = True
                    r.prefill_s += time.perf_counter() - job.slice_t0
                if n and r.first_token_s is None:
                    r.first_token_s = time.perf_counter() - job.slice_t0 + r.generate_s
                if req.on_delta is not None:
                    req.on_delta(text, n)

            job.streamer = JobStreamer(b.tokenizer, on_delta)
        assert job.prompt_ids is not None and job.streamer is not None
        ids = job.prompt_ids + r.token_ids
        session = req.session_id if req.kind == "answer" else None
        remaining = req.max_new_tokens - r.completion_tokens
        cache, p = self.kv.take(session, ids, remaining)
        if job.features is not None:
            feats = job.features if p == 0 else None
        else:
            feats = self.prompts.features(self.prompts.suffix_audios(job.audios or [], ids[p:]))
        if r.generate_calls == 0:
            r.cached_tokens = p
            r.prepare_s = time.perf_counter() - t0
        r.prefill_tokens += len(ids) - p
        input_ids = torch.tensor([ids], device=b.device)
        check = _StepCheck(job, should_yield)
        extra: dict[str, Any] = {self._cache_kwarg: cache}
        if is_static(cache):
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
        job.slice_token_seen = False
        before = r.completion_tokens
        job.slice_t0 = time.perf_counter()
        with b.lock, torch.inference_mode():
            if req.seed is not None and r.generate_calls == 0:
                torch.manual_seed(req.seed)
            r.generate_calls += 1
            out = b.model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
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
        self.kv.keep(session, ids + new, out.cache if self._cache_kwarg == "cache" else out.past_key_values)
        ended = bool(new) and new[-1] == b.eos_token_id
        at_limit = r.completion_tokens >= req.max_new_tokens
        done = req.cancel.is_set() or at_limit or ended or len(new) == 0 or r.completion_tokens == before
        if check.yielded and not done:
            return True
        # The limit only counts when the model had not ended by itself on its last allowed token.
        r.finish_reason = None if req.cancel.is_set() else "length" if at_limit and not ended else "stop"
        return False

    def refresh(self, job: Job) -> None:
        """Prefill the session's next context (everything before the next user turn) while idle."""
        req, r = job.request, job.result
        b = self.bundle
        t0 = time.perf_counter()
        inst = self.prompts.tokens.inst
        probe = [*(req.conversation or []), {"role": "user", "content": [{"type": "text", "text": "."}]}]
        ids, audios = self.prompts.chat(probe, req.tools)
        # The next turn's prompt shares everything before the last [INST].
        cut = len(ids) - 1 - ids[::-1].index(inst)
        ids = ids[:cut]
        r.prompt_tokens = len(ids)
        if self.kv.prefix(req.session_id, ids) >= len(ids):
            r.cached_tokens = len(ids)
            return  # all there already: the cache is left whole (the next turn may share more of it)
        cache, p = self.kv.take(req.session_id, ids + [inst])
        p = min(p, len(ids))
        r.cached_tokens = p
        suffix = ids[p:]
        feats = self.prompts.features(self.prompts.suffix_audios(audios, suffix))
        r.prepare_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        with b.lock, torch.inference_mode():
            kwargs: dict[str, Any] = {self._cache_kwarg: cache}
            if feats is not None:
                kwargs["input_features"] = feats
            b.model(
                input_ids=torch.tensor([suffix], device=b.device),
                attention_mask=torch.ones((1, len(ids)), dtype=torch.long, device=b.device),
                use_cache=True,
                **kwargs,
            )
        r.prefill_s = time.perf_counter() - t1
        r.prefill_tokens = len(suffix)
        self.kv.keep(req.session_id, ids, cache)
