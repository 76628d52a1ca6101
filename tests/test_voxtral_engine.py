"""The shared Voxtral engine: KV reuse, bounded caches, fairness between sessions, background work."""

from __future__ import annotations

import threading

import numpy as np

from tests.voxtral_fixtures import WAIT_TIMEOUT_S, tiny_bundle_fixture  # noqa: F401
from voxtral_pipeline.engine import EngineRequest, VoxtralEngine
from voxtral_pipeline.models.voxtral import ConversationTurn, audio_content_part, build_conversation


def _audio(seed: int, secs: float = 1.0) -> dict:
    rng = np.random.default_rng(seed)
    return audio_content_part((0.1 * rng.standard_normal(int(secs * 16000))).astype(np.float32))


def _conversation(n_users: int, answers: list[str]) -> list[dict]:
    turns: list[ConversationTurn] = []
    for i in range(n_users):
        turns.append(ConversationTurn("user", audio=_audio(i)))
        if i < len(answers):
            turns.append(ConversationTurn("assistant", text=answers[i]))
    return build_conversation(turns, "Be brief.")


def _answer(engine: VoxtralEngine, session: str, conversation: list[dict], **kw):
    return engine.submit(EngineRequest(session, conversation=conversation, **kw)).result(WAIT_TIMEOUT_S)


def test_kv_reuse_prefills_only_the_new_turn_and_matches_full_recompute(tiny_bundle):
    engine = VoxtralEngine(tiny_bundle, kv_cache=True)
    plain = VoxtralEngine(tiny_bundle, kv_cache=False)
    try:
        answers: list[str] = []
        prefill, plain_prefill = [], []
        for n in range(1, 5):
            conv = _conversation(n, answers)
            r = _answer(engine, "s", conv, max_new_tokens=6)
            p = _answer(plain, "s", conv, max_new_tokens=6)
            assert r.token_ids == p.token_ids  # greedy: the cache changes nothing but the work
            assert r.generate_calls == 1
            prefill.append(r.prefill_tokens)
            plain_prefill.append(p.prefill_tokens)
            answers.append(r.text[:4])  # an interrupted answer: only part of it was said
        # Turn N's prefill does not grow with N (one new audio turn + a few text tokens).
        assert all(375 < x < 375 + 30 for x in prefill[1:]), prefill
        assert max(prefill[1:]) - min(prefill[1:]) <= 4, prefill
        assert plain_prefill == sorted(plain_prefill) and plain_prefill[-1] > 4 * 375  # it would grow
    finally:
        engine.close()
        plain.close()


def test_static_cache_is_rewound_and_gives_the_same_tokens(tiny_bundle):
    static = VoxtralEngine(tiny_bundle, static_cache=True, kv_cache_max_tokens=2048)
    plain = VoxtralEngine(tiny_bundle, kv_cache=False)
    try:
        answers: list[str] = []
        for n in range(1, 4):
            conv = _conversation(n, answers)
            r = _answer(static, "s", conv, max_new_tokens=5)
            assert r.token_ids == _answer(plain, "s", conv, max_new_tokens=5).token_ids
            if n > 1:
                assert r.prefill_tokens < 375 + 30
            answers.append(r.text[:3])
    finally:
        static.close()
        plain.close()


def test_caches_are_bounded_per_session_and_evicted_across_sessions(tiny_bundle):
    engine = VoxtralEngine(tiny_bundle, kv_cache_max_tokens=500, kv_cache_sessions=1)
    try:
        two = _conversation(2, ["ok"])
        first = _answer(engine, "a", two, max_new_tokens=4)
        assert first.prompt_tokens > 500 and engine.cached_tokens("a") == 500  # cropped to the bound
        again = _answer(engine, "a", two, max_new_tokens=4)
        assert again.cached_tokens > 0 and again.token_ids == first.token_ids  # the kept prefix is reused
        _answer(engine, "b", _conversation(1, []), max_new_tokens=4)
        assert engine.cached_tokens("a") == 0 and engine.cached_tokens("b") > 0  # LRU eviction
        engine.release_session("b")
        assert engine.cached_tokens("b") == 0
    finally:
        engine.close()


def test_a_new_turn_does_not_wait_for_another_sessions_long_answer(tiny_bundle):
    engine = VoxtralEngine(tiny_bundle, quantum_tokens=4, kv_cache=True)
    reference = VoxtralEngine(tiny_bundle, kv_cache=False)
    order: list[str] = []
    futures = {}
    submitted = threading.Event()

    def on_a(text: str, n: int) -> None:
        order.append("a")
        if order.count("a") == 3 and not submitted.is_set():
            submitted.set()
            futures["b"] = engine.submit(
                EngineRequest(
                    "b",
                    conversation=_conversation(1, []),
                    max_new_tokens=5,
                    min_new_tokens=5,
                    on_delta=lambda t, n: order.append("b"),
                )
            )

    try:
        conv = _conversation(1, [])
        a = engine.submit(
            EngineRequest("a", conversation=conv, max_new_tokens=40, min_new_tokens=40, on_delta=on_a)
        ).result(WAIT_TIMEOUT_S)
        b = futures["b"].result(WAIT_TIMEOUT_S)
        first_b = order.index("b")
        # B's first token came after at most one quantum more of A, long before A's end.
        assert first_b <= 3 + 4 + 1
        assert order[first_b:].count("a") >= 40 - first_b
        assert a.preemptions >= 1 and a.generate_calls == a.preemptions + 1
        assert b.completion_tokens == 5 and b.generate_calls == b.preemptions + 1  # round robin
        # Yielding and resuming from the KV cache changes nothing in A's answer.
        full = reference.submit(
            EngineRequest("a", conversation=conv, max_new_tokens=40, min_new_tokens=40)
        ).result(WAIT_TIMEOUT_S)
        assert a.token_ids == full.token_ids
        kinds = [(e.session_id, e.event) for e in engine.events if e.kind == "answer"]
        assert kinds.index(("a", "yield")) < kinds.index(("b", "start")) < kinds.index(("a", "resume"))
    finally:
        engine.close()
        reference.close()


def test_background_transcription_gives_way_at_once_and_starts_over(tiny_bundle):
    engine = VoxtralEngine(tiny_bundle)
    steps: list[str] = []
    futures = {}
    rng = np.random.default_rng(3)
    audio = (0.1 * rng.standard_normal(16000)).astype(np.float32)

    def on_transcript(text: str, n: int) -> None:
        steps.append("t")
        if steps.count("t") == 2 and "answer" not in futures:
            futures["answer"] = engine.submit(
                EngineRequest(
                    "s",
                    conversation=_conversation(1, []),
                    max_new_tokens=3,
                    on_delta=lambda t, n: steps.append("a"),
                )
            )

    try:
        transcript = engine.submit(
            EngineRequest(
                "s",
                kind="transcribe",
                audio=audio,
                max_new_tokens=30,
                min_new_tokens=30,
                on_delta=on_transcript,
            )
        )
        result = transcript.result(WAIT_TIMEOUT_S)
        answer = futures["answer"].result(WAIT_TIMEOUT_S)
        first_a = steps.index("a")
        assert first_a <= 3  # at most one more transcription step after the answer arrived
        assert answer.completion_tokens == 3
        assert result.completion_tokens == 30 and not result.cancelled  # redone in full later
        events = [(e.kind, e.event) for e in engine.events]
        assert events.index(("transcribe", "yield")) < events.index(("answer", "start"))
        assert events.index(("answer", "done")) < len(events) - 1 - events[::-1].index(
            ("transcribe", "start")
        )
    finally:
        engine.close()


def test_idle_refresh_prefills_a_rewritten_history_exactly(tiny_bundle):
    engine = VoxtralEngine(tiny_bundle)
    plain = VoxtralEngine(tiny_bundle, kv_cache=False)
    try:
        turns: list[ConversationTurn] = []
        for i in range(3):
            turns.append(ConversationTurn("user", audio=_audio(40 + i)))
            r = _answer(engine, "s", build_conversation(turns, "x"), max_new_tokens=4)
            turns.append(ConversationTurn("assistant", text=r.text[:3]))
        # The first user turn falls out of the audio budget: its transcript replaces it.
        rewritten = [ConversationTurn("user", text="a transcript"), *turns[1:]]
        refresh = engine.submit(
            EngineRequest("s", kind="refresh", conversation=build_conversation(rewritten, "x"))
        ).result(WAIT_TIMEOUT_S)
        assert refresh.prefill_tokens > 2 * 375  # everything after the changed turn, done while idle
        rewritten.append(ConversationTurn("user", audio=_audio(50)))
        conv = build_conversation(rewritten, "x")
        r = _answer(engine, "s", conv, max_new_tokens=6)
        assert 375 < r.prefill_tokens < 375 + 10  # the new turn only
        assert r.token_ids == _answer(plain, "s", conv, max_new_tokens=6).token_ids
    finally:
        engine.close()
        plain.close()


def test_a_refresh_with_nothing_to_prefill_leaves_the_cache_whole_and_the_store_true(tiny_bundle):
    """A refresh whose context is all cached used to crop the session's cache in place and keep
    nothing, so the store still listed ids the cache no longer held: the next turn took them as
    cached and failed ("Audio features and audio tokens do not match"). It happened after an answer
    that said nothing (a cut function call): the next prompt merges the two user turns."""
    from voxtral_pipeline.engine.kv_store import seq_length

    engine = VoxtralEngine(tiny_bundle)
    plain = VoxtralEngine(tiny_bundle, kv_cache=False)
    try:
        _answer(engine, "s", _conversation(1, []), max_new_tokens=4)
        held = engine.cached_tokens("s")
        # The context before the next [INST] is "<s>" alone here: already cached.
        refresh = engine.submit(EngineRequest("s", kind="refresh", conversation=[])).result(WAIT_TIMEOUT_S)
        assert refresh.prefill_tokens == 0 and engine.cached_tokens("s") == held
        conv = _conversation(2, ["ab"])
        r = _answer(engine, "s", conv, max_new_tokens=4)
        assert r.token_ids == _answer(plain, "s", conv, max_new_tokens=4).token_ids
        assert r.cached_tokens > 375  # the first turn's audio came from the cache
        # Whoever takes a cache and keeps nothing back, the store says what the cache holds.
        cache, p = engine.kv.take("s", engine.prompts.chat(_conversation(1, []), None)[0][:10])
        assert engine.cached_tokens("s") == seq_length(cache) == p
    finally:
        engine.close()
        plain.close()


def test_a_static_cache_made_in_inference_mode_is_cropped_without_error(tiny_bundle):
    """``generate()`` fills caches inside ``torch.inference_mode()``: their rewind must run there too."""
    import torch
    from transformers import StaticCache

    from voxtral_pipeline.engine.kv_store import crop, seq_length

    model = tiny_bundle.model
    with torch.inference_mode():
        cache = StaticCache(config=model.config, max_cache_len=64)
        ids = torch.tensor([[1, 3, 100, 101, 102, 103, 104, 4]])
        model(input_ids=ids, attention_mask=torch.ones_like(ids), cache=cache, use_cache=True)
    assert seq_length(cache) == 8
    crop(cache, 5)  # outside inference mode, as the KV store is called
    assert seq_length(cache) == 5


def test_a_transcription_computes_its_mel_features_once(tiny_bundle, monkeypatch):
    extractor = type(tiny_bundle.processor.feature_extractor)
    calls: list[int] = []
    original = extractor.__call__

    def counting(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(extractor, "__call__", counting)
    engine = VoxtralEngine(tiny_bundle)
    try:
        samples = (0.1 * np.random.default_rng(5).standard_normal(16000)).astype(np.float32)
        result = engine.submit(EngineRequest("t", kind="transcribe", audio=samples, max_new_tokens=3)).result(
            WAIT_TIMEOUT_S
        )
    finally:
        engine.close()
    assert len(calls) == 1
    assert result.audio_tokens == 375 and result.completion_tokens >= 1


def test_generate_gets_its_cache_without_the_deprecated_keyword(tiny_bundle):
    import warnings

    from voxtral_pipeline.engine.generate import cache_kwarg

    engine = VoxtralEngine(tiny_bundle)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            _answer(engine, "w", _conversation(1, []), max_new_tokens=3)
    finally:
        engine.close()
    assert not [w for w in caught if "past_key_values" in str(w.message)]
    assert cache_kwarg(tiny_bundle.model) in ("cache", "past_key_values")


def test_control_tokens_come_from_the_tokenizer_and_a_missing_one_is_a_clear_error(tiny_bundle):
    import pytest

    from voxtral_pipeline.engine.tokens import MissingTokenError, SpecialTokens

    tokens = SpecialTokens.from_tokenizer(tiny_bundle.tokenizer)
    assert (tokens.audio, tokens.begin_audio, tokens.inst, tokens.transcribe) == (24, 25, 3, 34)

    class NoAudio:
        eos_token_id = 2
        unk_token_id = 0

        def convert_tokens_to_ids(self, token: str) -> int:
            return 0 if token == "[AUDIO]" else 7

    with pytest.raises(MissingTokenError, match=r"no \[AUDIO\] control token"):
        SpecialTokens.from_tokenizer(NoAudio())
