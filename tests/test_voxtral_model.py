"""Voxtral loading: the offline tekken tokenizer, dummy models, specs that cannot load, streaming."""

from __future__ import annotations

import threading
import time
import uuid

import numpy as np
import pytest
import torch
from transformers import MistralCommonBackend, VoxtralForConditionalGeneration

from tests.voxtral_fixtures import tiny_bundle_fixture  # noqa: F401  (the tiny_bundle fixture)
from voxtral_pipeline.audio import float_to_pcm16, pcm16_to_float
from voxtral_pipeline.engine import EngineRequest, EngineResult, VoxtralEngine
from voxtral_pipeline.models import HUB_PROBE_TIMEOUT_S, ModelUnavailableError
from voxtral_pipeline.models import voxtral as vx
from voxtral_pipeline.models.tekken import (
    AUDIO_TOKEN_ID,
    BEGIN_AUDIO_TOKEN_ID,
    EOS_TOKEN_ID,
    FULL_VOCAB_SIZE,
    TINY_VOCAB_SIZE,
    TRANSCRIBE_TOKEN_ID,
    byte_token_id,
    tekken_data,
    write_tekken,
)
from voxtral_pipeline.models.voxtral import (
    ConversationTurn,
    TokenStreamer,
    audio_content_part,
    build_conversation,
    load_voxtral,
)


def _generate(bundle, conversation, **kwargs) -> EngineResult:
    """One answer through the shared engine, on a fresh session (no KV cache carried over)."""
    engine = VoxtralEngine.for_bundle(bundle)
    session = f"model-test-{uuid.uuid4().hex}"
    try:
        request = EngineRequest(session_id=session, conversation=conversation, **kwargs)
        return engine.submit(request).result(timeout=300)
    finally:
        engine.release_session(session)


def _conversation(secs: float = 1.0, text: str | None = "Answer briefly.") -> list[dict]:
    audio = audio_content_part(np.zeros(int(secs * 16000), np.float32))
    return build_conversation([ConversationTurn("user", audio=audio)], text)


# --- tokenizer ---------------------------------------------------------------------------------


def test_tiny_tekken_special_ids(tmp_path):
    tok = MistralCommonBackend(tokenizer_path=str(write_tekken(tmp_path, "tiny")))
    assert len(tok) == TINY_VOCAB_SIZE == 1256
    ids = {
        s: tok.convert_tokens_to_ids(s) for s in ("[AUDIO]", "[BEGIN_AUDIO]", "[TRANSCRIBE]", "</s>", "<s>")
    }
    assert ids == {
        "[AUDIO]": AUDIO_TOKEN_ID,
        "[BEGIN_AUDIO]": BEGIN_AUDIO_TOKEN_ID,
        "[TRANSCRIBE]": TRANSCRIBE_TOKEN_ID,
        "</s>": EOS_TOKEN_ID,
        "<s>": 1,
    }
    assert (AUDIO_TOKEN_ID, BEGIN_AUDIO_TOKEN_ID, TRANSCRIBE_TOKEN_ID) == (24, 25, 34)
    text = "hello, world."
    assert tok.encode(text, add_special_tokens=False) == [byte_token_id(b) for b in text.encode()]


def test_full_tekken_has_the_real_vocab_size():
    data = tekken_data("full")
    assert data["config"]["version"] == "v7"
    assert data["config"]["default_vocab_size"] == FULL_VOCAB_SIZE == 131072
    assert data["audio"]["sampling_rate"] == 16000 and data["audio"]["frame_rate"] == 12.5
    assert data["audio"]["audio_encoding_config"] == {
        "num_mel_bins": 128,
        "hop_length": 160,
        "window_size": 400,
    }
    assert [t["token_str"] for t in data["special_tokens"][24:26]] == ["[AUDIO]", "[BEGIN_AUDIO]"]


def test_unknown_tekken_kind():
    with pytest.raises(ValueError, match="unknown tekken kind"):
        tekken_data("huge")  # type: ignore[arg-type]


@pytest.mark.parametrize(("secs", "chunks"), [(1.0, 1), (29.9, 1), (31.0, 2)])
def test_audio_tokens_per_30s_chunk(tiny_bundle, secs, chunks):
    inputs = tiny_bundle.prepare_inputs(_conversation(secs))
    ids = inputs["input_ids"][0].tolist()
    assert ids.count(AUDIO_TOKEN_ID) == 375 * chunks
    assert ids.count(BEGIN_AUDIO_TOKEN_ID) == 1
    assert tuple(inputs["input_features"].shape) == (chunks, 128, 3000)


def test_audio_part_from_pcm_bytes_float_and_other_rates(tiny_bundle):
    samples = (0.1 * np.random.default_rng(1).standard_normal(16000)).astype(np.float32)
    pcm = float_to_pcm16(samples)
    from_bytes = audio_content_part(pcm, 16000)
    assert from_bytes["type"] == "audio" and set(from_bytes) == {"type", "base64"}
    feats_bytes = tiny_bundle.prepare_inputs(build_conversation([ConversationTurn("user", audio=from_bytes)]))
    feats_float = tiny_bundle.prepare_inputs(
        build_conversation([ConversationTurn("user", audio=audio_content_part(pcm16_to_float(pcm), 16000))])
    )
    assert torch.allclose(feats_bytes["input_features"], feats_float["input_features"], atol=1e-4)
    at_8k = audio_content_part(float_to_pcm16(samples[::2]), 8000)  # resampled to 16 kHz
    ids = tiny_bundle.prepare_inputs(build_conversation([ConversationTurn("user", audio=at_8k)]))["input_ids"]
    assert int((ids == AUDIO_TOKEN_ID).sum()) == 375


def test_conversation_puts_instructions_in_first_user_turn_only(tiny_bundle):
    audio = audio_content_part(np.zeros(16000, np.float32))
    turns = [
        ConversationTurn("user", audio=audio),
        ConversationTurn("assistant", text="first answer"),
        ConversationTurn("user", audio=audio),
        ConversationTurn("assistant", text=""),  # interrupted before its first word: left out
        ConversationTurn("user", audio=audio),
    ]
    messages = build_conversation(turns, "Be brief.")
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "user"]
    assert all(m["role"] != "system" for m in messages)
    assert messages[0]["content"][-1] == {"type": "text", "text": "Be brief."}
    assert all(p["type"] == "audio" for m in messages[2:] for p in m["content"])
    ids = tiny_bundle.prepare_inputs(messages)["input_ids"][0].tolist()
    prompt = tiny_bundle.tokenizer.decode([i for i in ids if i != AUDIO_TOKEN_ID], skip_special_tokens=False)
    assert prompt.count("Be brief.") == 1
    assert "[/INST]first answer</s>" in prompt
    assert ids.count(AUDIO_TOKEN_ID) == 3 * 375


# --- dummy:tiny --------------------------------------------------------------------------------


def test_dummy_tiny_loads_through_from_pretrained(tmp_path, monkeypatch):
    loaded_from: list[str] = []
    real = VoxtralForConditionalGeneration.from_pretrained.__func__

    def spy(cls, source, *args, **kwargs):
        loaded_from.append(str(source))
        return real(cls, source, *args, **kwargs)

    monkeypatch.setattr(VoxtralForConditionalGeneration, "from_pretrained", classmethod(spy))
    bundle = load_voxtral("dummy:tiny", device="cpu", cache_dir=tmp_path)
    folder = vx.dummy_tiny_dir(0, tmp_path)
    assert loaded_from == [str(folder)]
    assert {"config.json", "model.safetensors", "generation_config.json", "tekken.json"} <= {
        p.name for p in folder.iterdir()
    }
    assert bundle.is_dummy and bundle.device == "cpu" and bundle.dtype == torch.float32
    assert bundle.spec == "dummy:tiny"
    assert type(bundle.processor).__name__ == "VoxtralProcessor"
    assert bundle.model.config.text_config.vocab_size == len(bundle.tokenizer) == TINY_VOCAB_SIZE
    assert not bundle.model.training

    # Cached: the second load builds nothing.
    monkeypatch.setattr(vx, "build_dummy_tiny", lambda *a, **k: pytest.fail("rebuilt a cached dummy"))
    again = load_voxtral("dummy:tiny", device="cpu", cache_dir=tmp_path)
    assert loaded_from == [str(folder)] * 2
    assert torch.equal(again.model.lm_head.weight, bundle.model.lm_head.weight)


def test_dummy_tiny_corrupt_cache_is_rebuilt(tmp_path):
    first = load_voxtral("dummy:tiny", device="cpu", cache_dir=tmp_path)
    weights = vx.dummy_tiny_dir(0, tmp_path) / "model.safetensors"
    weights.unlink()  # a new file, not an in-place write: the loaded model memory-maps the old one
    weights.write_bytes(b"not a safetensors file")
    rebuilt = load_voxtral("dummy:tiny", device="cpu", cache_dir=tmp_path)
    assert torch.equal(rebuilt.model.lm_head.weight, first.model.lm_head.weight)


def test_dummy_tiny_is_deterministic_per_seed(tiny_bundle, tmp_path):
    same = load_voxtral("dummy:tiny", device="cpu", seed=0, cache_dir=tmp_path / "a")
    other = load_voxtral("dummy:tiny", device="cpu", seed=1, cache_dir=tmp_path / "b")
    ref = tiny_bundle.model.state_dict()
    assert all(torch.equal(ref[k], v) for k, v in same.model.state_dict().items())
    assert not all(torch.equal(ref[k], v) for k, v in other.model.state_dict().items())
    conv = _conversation()
    a = _generate(tiny_bundle, conv, max_new_tokens=12)
    b = _generate(same, conv, max_new_tokens=12)
    assert a.token_ids == b.token_ids and a.text


def test_dummy_tiny_emits_only_visible_text(tiny_bundle):
    result = _generate(tiny_bundle, _conversation(), max_new_tokens=40, temperature=1.0, top_p=1.0, seed=5)
    allowed = {EOS_TOKEN_ID} | {byte_token_id(b) for b in vx.TINY_VISIBLE_CHARS.encode()}
    assert result.token_ids and set(result.token_ids) <= allowed
    assert set(result.text) <= set(vx.TINY_VISIBLE_CHARS)


def test_dummy_full_has_the_real_architecture(tmp_path):
    bundle = load_voxtral("dummy:full", device="meta", dtype="bfloat16", cache_dir=tmp_path)
    n_params = sum(p.numel() for p in bundle.model.parameters())
    assert 4.67e9 < n_params < 4.69e9
    assert len(bundle.tokenizer) == bundle.model.config.text_config.vocab_size == 131072
    dtypes = {n: p.dtype for n, p in bundle.model.named_parameters()}
    assert dtypes["model.audio_tower.embed_positions.weight"] == torch.float32  # as from_pretrained keeps it
    assert bundle.model.lm_head.weight.dtype == torch.bfloat16
    assert len(bundle.model.generation_config.suppress_tokens) == 999
    assert bundle.tokenizer.convert_tokens_to_ids("[AUDIO]") == AUDIO_TOKEN_ID


def test_resolve_dtype():
    assert vx.resolve_dtype("auto", "cpu") == torch.float32
    assert vx.resolve_dtype("float16", "cpu") == torch.float16
    with pytest.raises(ValueError):
        vx.resolve_dtype("int8", "cpu")


# --- specs that cannot load --------------------------------------------------------------------


def _one_sentence(error: BaseException) -> str:
    message = str(error)
    assert message and "\n" not in message and "Traceback" not in message
    return message


def test_unknown_dummy_size():
    with pytest.raises(ModelUnavailableError) as e:
        load_voxtral("dummy:huge", device="cpu")
    assert "dummy:tiny" in _one_sentence(e.value)


def test_missing_local_directory(tmp_path):
    with pytest.raises(ModelUnavailableError) as e:
        load_voxtral(str(tmp_path / "no-such-model"), device="cpu")
    assert "not found" in _one_sentence(e.value)


def test_local_directory_without_a_model(tmp_path):
    with pytest.raises(ModelUnavailableError) as e:
        load_voxtral(str(tmp_path), device="cpu")
    assert str(tmp_path) in _one_sentence(e.value)


def test_uncached_hub_id_offline_fails_fast(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.monotonic()
    with pytest.raises(ModelUnavailableError) as e:
        load_voxtral("voxtral-pipeline-tests/no-such-voxtral", device="cpu")
    message = _one_sentence(e.value)
    assert "voxtral-pipeline-tests/no-such-voxtral" in message and "--model" in message
    assert "dummy:tiny" in message
    assert not vx.hub_reachable()
    # Not a timing goal: only a guard against falling into the hub client's minutes of retries.
    assert time.monotonic() - t0 < 30


def test_unreachable_hub_is_probed_once_not_retried(monkeypatch):
    """Without offline mode, one failed probe is enough to give up (the hub client retries for minutes)."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    probes: list[float] = []

    def unreachable(timeout: float = HUB_PROBE_TIMEOUT_S) -> bool:
        probes.append(timeout)
        return False

    monkeypatch.setattr(vx, "hub_reachable", unreachable)
    with pytest.raises(ModelUnavailableError, match="not in the local HuggingFace cache"):
        load_voxtral("voxtral-pipeline-tests/no-such-voxtral", device="cpu")
    assert probes == [HUB_PROBE_TIMEOUT_S]


# --- streaming ---------------------------------------------------------------------------------


def test_token_streamer_holds_back_only_incomplete_utf8(tiny_bundle):
    text = "héllo ✓ ok"
    ids = [byte_token_id(b) for b in text.encode()]
    deltas: list[tuple[str, int]] = []
    streamer = TokenStreamer(tiny_bundle.tokenizer, lambda d, n: deltas.append((d, n)))
    streamer.put(torch.tensor([[1, 3, 4]]))  # the prompt: skipped
    for i in ids:
        streamer.put(torch.tensor([i]))
    streamer.end()
    assert "".join(d for d, _ in deltas) == text
    assert len(deltas) == len(ids)  # one callback per token, none at the end
    assert [d for d, _ in deltas[:3]] == ["h", "", "é"]  # 'é' is two bytes: one token held
    assert [d for d, _ in deltas[7:10]] == ["", "", "✓"]  # '✓' is three bytes


def test_token_streamer_flushes_a_dangling_byte_at_the_end(tiny_bundle):
    deltas: list[tuple[str, int]] = []
    streamer = TokenStreamer(tiny_bundle.tokenizer, lambda d, n: deltas.append((d, n)))
    streamer.put(torch.tensor([[1]]))
    streamer.put(torch.tensor([byte_token_id(ord("a"))]))
    streamer.put(torch.tensor([byte_token_id(0xC3)]))
    streamer.end()
    assert deltas == [("a", 1), ("", 1), ("\ufffd", 0)]


def test_engine_deltas_equal_decoded_ids(tiny_bundle):
    deltas: list[str] = []
    result = _generate(
        tiny_bundle, _conversation(), on_delta=lambda d, n: deltas.append(d), max_new_tokens=30
    )
    assert len(deltas) == result.completion_tokens == len(result.token_ids) > 0
    assert "".join(deltas) == result.text == tiny_bundle.decode(result.token_ids)
    assert result.prompt_tokens > result.audio_tokens == 375
    assert not result.cancelled and result.first_token_s is not None


def test_engine_cancel_stops_within_one_step(tiny_bundle):
    cancel = threading.Event()
    seen: list[str] = []

    def on_delta(text: str, n_tokens: int) -> None:
        seen.append(text)
        if len(seen) == 3:
            cancel.set()

    result = _generate(tiny_bundle, _conversation(), on_delta=on_delta, cancel=cancel, max_new_tokens=300)
    assert result.cancelled
    # generate() checks its stopping criteria before streaming a token: the one in flight is the last.
    assert result.completion_tokens == 4


def test_greedy_and_seeded_sampling(tiny_bundle):
    conv = _conversation()
    assert vx.sampling_kwargs(0.0, 0.9) == {"do_sample": False}
    assert vx.sampling_kwargs(0.7, 0.9) == {"do_sample": True, "temperature": 0.7, "top_p": 0.9}
    a = _generate(tiny_bundle, conv, max_new_tokens=20, temperature=1.0, top_p=0.95, seed=7)
    b = _generate(tiny_bundle, conv, max_new_tokens=20, temperature=1.0, top_p=0.95, seed=7)
    assert a.token_ids == b.token_ids
