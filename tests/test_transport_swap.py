"""Swap by config: every transport gets the same stages, built the same way from the same config.

The pipeline for each of webrtc, websocket, daily, local and file is built from ONE config that
differs only in ``transport.kind``; the Voxtral stage (and the loaded model it runs on) must be
the same class, config and code path whichever transport carries the audio.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from tests.transport_helpers import dummy_config, importable, shared_models
from voxtral_pipeline.config import TRANSPORT_KINDS, ConfigError, load_config
from voxtral_pipeline.pipeline import build_transport
from voxtral_pipeline.processors.kokoro import KokoroTTSService
from voxtral_pipeline.processors.voxtral import VoxtralLLMService
from voxtral_pipeline.server import build_session
from voxtral_pipeline.testing.speech import write_wav
from voxtral_pipeline.transports.local import AudioDevice

FAKE_DEVICES = [
    AudioDevice(0, "Fake microphone", 1, 0, 48000.0),
    AudioDevice(1, "Fake speaker", 0, 2, 48000.0),
]
EXPECTED_TRANSPORT = {
    "webrtc": "SmallWebRTCTransport",
    "websocket": "BoundedWebsocketTransport",
    "daily": "DailyTransport",
    "local": "LocalAudioTransport",
    "file": "FileTransport",
}


def _transport_for(kind: str, tmp_path):
    wav = write_wav(tmp_path / "in.wav", np.zeros(16000, np.float32))
    config = dummy_config(
        kind,
        **{
            "transport.file.input": str(wav),
            "transport.daily.room_url": "https://example.daily.co/swap-test",
        },
    )
    if kind == "daily" and not importable("daily"):
        pytest.skip("daily-python is not installed (pip install 'voxtral-pipeline[daily]')")
    if kind == "local" and not importable("pyaudio"):
        pytest.skip("PyAudio is not installed (pip install 'voxtral-pipeline[local]')")
    from pipecat.transports.smallwebrtc.connection import SmallWebRTCConnection

    kwargs = {
        "connection": SmallWebRTCConnection(),
        "websocket": SimpleNamespace(headers={}),
        "devices": FAKE_DEVICES,
    }
    return config, build_transport(config, **kwargs)


@pytest.mark.parametrize("kind", TRANSPORT_KINDS)
def test_same_stages_for_every_transport(kind, tmp_path):
    base = dummy_config("file")
    config, transport = _transport_for(kind, tmp_path)
    assert type(transport).__name__ == EXPECTED_TRANSPORT[kind]
    # Only the transport section differs from the base config.
    assert config.model_dump(exclude={"transport"}) == base.model_dump(exclude={"transport"})

    models = shared_models()
    for shared in (models, None):  # the server path (models loaded once) and the CLI path
        voice = build_session(config, transport, shared)
        stages = voice.pipeline.processors
        names = [type(p).__name__ for p in stages]
        assert stages[1] is transport.input() and stages[-3] is transport.output(), names
        assert names[-2] == "PlaybackTracker"  # after the output: what the listener heard
        assert names[2:-3] == [
            "TurnStage",
            "VoxtralLLMService",
            "WordChunker",
            "KokoroTTSService",
            "MetricsStage",
        ]
        assert type(voice.voxtral) is VoxtralLLMService and type(voice.tts) is KokoroTTSService
        assert voice.voxtral._config == base.voxtral
        if shared is not None:
            # Every session on every transport runs on the one loaded model.
            assert voice.voxtral.bundle is models.voxtral and voice.tts.bundle is models.kokoro
        else:
            assert voice.voxtral.bundle is None  # loads from the same config in setup()


def test_connection_transports_need_their_connection():
    for kind in ("webrtc", "websocket"):
        with pytest.raises(ValueError, match="pass (connection|websocket)="):
            build_transport(dummy_config(kind))


def test_an_input_wav_alone_means_the_file_transport():
    # Library code written for the file transport keeps working without naming it.
    assert load_config(overrides={"transport.file.input": "x.wav"}, environ={}).transport.kind == "file"
    config = load_config(
        overrides={"transport.file.input": "x.wav", "transport.kind": "websocket"}, environ={}
    )
    assert config.transport.kind == "websocket"
    assert load_config(environ={}).transport.kind == "webrtc"


def test_cli_transport_flag_and_config_file(tmp_path):
    import argparse

    from voxtral_pipeline import cli
    from voxtral_pipeline.cli import _overrides

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    cli._add_run_parser(sub)
    for kind in TRANSPORT_KINDS:
        args = parser.parse_args(["run", "--transport", kind])
        assert load_config(None, _overrides(args), environ={}).transport.kind == kind

    # --input alone means the file transport; nothing means the browser.
    def kind_of(*argv: str) -> str:
        return load_config(None, _overrides(parser.parse_args(["run", *argv])), environ={}).transport.kind

    assert kind_of("-i", "x.wav") == "file"
    assert kind_of() == "webrtc"
    toml = tmp_path / "bot.toml"
    toml.write_text('[transport]\nkind = "websocket"\n[transport.server]\nport = 9000\nmax_sessions = 2\n')
    cfg = load_config(toml, environ={})
    assert cfg.transport.kind == "websocket" and cfg.transport.server.port == 9000
    with pytest.raises(ConfigError, match="transport.kind"):
        load_config(overrides={"transport.kind": "carrier-pigeon"}, environ={})
    with pytest.raises(SystemExit):
        parser.parse_args(["run", "--transport", "carrier-pigeon"])
