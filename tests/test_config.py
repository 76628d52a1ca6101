"""Declarative config: file, env and CLI layers; errors that name the field and allowed values."""

import pytest

from voxtral_pipeline.config import ConfigError, load_config


def test_defaults_are_the_real_models():
    c = load_config(environ={})
    assert c.voxtral.model == "mistralai/Voxtral-Mini-3B-2507"
    assert c.kokoro.model == "hexgrad/Kokoro-82M" and c.kokoro.voice == "af_heart"
    assert c.turns.vad.stop_secs == 0.2 and c.turns.smart_turn


def test_file_env_and_overrides_layer_in_order(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('[voxtral]\nmodel = "dummy:tiny"\nmax_new_tokens = 10\n[kokoro]\nvoice = "x.pt"\n')
    c = load_config(
        f,
        {"voxtral.max_new_tokens": "30"},
        environ={"VOXTRAL_PIPELINE__VOXTRAL__MAX_NEW_TOKENS": "20", "VOXTRAL_PIPELINE__KOKORO__SPEED": "1.5"},
    )
    assert c.voxtral.model == "dummy:tiny"
    assert c.voxtral.max_new_tokens == 30
    assert c.kokoro.speed == 1.5 and c.kokoro.voice == "x.pt"


def test_yaml_file(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("turns:\n  pre_roll_ms: 250\n")
    assert load_config(f, environ={}).turns.pre_roll_ms == 250


@pytest.mark.parametrize(
    "override, expected",
    [
        (
            {"voxtral.dtype": "bf17"},
            "voxtral.dtype: Input should be 'auto', 'bfloat16', 'float16' or 'float32'",
        ),
        (
            {"voxtral.modle": "x"},
            "voxtral.modle: unknown key (allowed: attn_implementation, backend, compile",
        ),
        ({"transport.kind": "carrier-pigeon"}, "transport.kind: Input should be 'webrtc', 'websocket'"),
        ({"turns.vad.stop_secs": "-1"}, "turns.vad.stop_secs: Input should be greater than or equal to 0"),
        ({"voxtral.max_new_tokens": "many"}, "voxtral.max_new_tokens: Input should be a valid integer"),
    ],
)
def test_invalid_values_name_the_field(override, expected):
    with pytest.raises(ConfigError) as e:
        load_config(overrides=override, environ={})
    assert expected in str(e.value)
    assert "\n" not in str(e.value)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[voxtral\n")
    with pytest.raises(ConfigError, match="cannot parse config file"):
        load_config(bad)
    top = tmp_path / "list.yaml"
    top.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="top level"):
        load_config(top)


def test_unknown_top_level_section():
    with pytest.raises(ConfigError, match=r"nonsense: unknown key \(allowed: audio, chunker, kokoro"):
        load_config(overrides={"nonsense.x": "1"}, environ={})
    with pytest.raises(ConfigError, match=r"vad\.confidence"):
        load_config(overrides={"turns.vad.confidence": "2"}, environ={})


def test_configuration_reference_is_in_sync():
    from pathlib import Path

    from voxtral_pipeline.config import config_reference

    doc = Path(__file__).parent.parent / "docs" / "configuration.md"
    assert doc.read_text() == config_reference() + "\n", (
        "run: python -m voxtral_pipeline.config > docs/configuration.md"
    )


def test_none_from_the_command_line_or_environment_unsets_an_optional_key():
    # docs promise `none` turns these off; --set and the environment only carry text.
    config = load_config(
        overrides={
            "transport.server.flood_disconnect_secs": "none",
            "turns.end_of_turn.context_pause_secs": "null",
        },
        environ={"VOXTRAL_PIPELINE__TRANSPORT__SERVER__AUDIO_IDLE_SECS": "None"},
    )
    assert config.transport.server.flood_disconnect_secs is None
    assert config.turns.end_of_turn.context_pause_secs is None
    assert config.transport.server.audio_idle_secs is None
    with pytest.raises(ConfigError, match="turns.max_silence_secs"):  # not optional: still an error
        load_config(overrides={"turns.max_silence_secs": "none"}, environ={})
