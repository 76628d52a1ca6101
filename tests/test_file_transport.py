"""File transport input handling: any WAV works, bad files get one clear error."""

import numpy as np
import pytest
import soundfile as sf

from voxtral_pipeline.config import FileTransportConfig
from voxtral_pipeline.transports.file import AudioInputError, FileTransport, read_input_audio


def _tone(rate: int, secs: float = 0.5) -> np.ndarray:
    t = np.arange(int(rate * secs)) / rate
    return (0.5 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


@pytest.mark.parametrize(
    "rate, channels, subtype",
    [
        (16000, 1, "PCM_16"),
        (44100, 2, "PCM_24"),
        (8000, 1, "FLOAT"),
        (48000, 2, "PCM_32"),
        (22050, 1, "PCM_U8"),
    ],
)
def test_any_wav_becomes_16k_mono(tmp_path, rate, channels, subtype):
    x = _tone(rate)
    data = np.stack([x] * channels, axis=1) if channels > 1 else x
    path = tmp_path / "in.wav"
    sf.write(str(path), data, rate, subtype=subtype)
    audio = read_input_audio(path, 16000)
    assert audio.sample_rate == 16000 and audio.source_rate == rate and audio.source_channels == channels
    assert audio.samples.ndim == 1 and audio.samples.dtype == np.float32
    assert abs(audio.duration_secs - 0.5) < 0.01
    assert 0.3 < np.abs(audio.samples).max() < 0.6


def test_missing_file(tmp_path):
    with pytest.raises(AudioInputError, match="input file not found"):
        read_input_audio(tmp_path / "nope.wav")


def test_directory_is_not_a_file(tmp_path):
    with pytest.raises(AudioInputError, match="not a file"):
        read_input_audio(tmp_path)


def test_not_audio(tmp_path):
    path = tmp_path / "notes.wav"
    path.write_text("this is not a wav file at all")
    with pytest.raises(AudioInputError, match="not a readable audio file"):
        read_input_audio(path)


def test_empty_wav(tmp_path):
    path = tmp_path / "empty.wav"
    sf.write(str(path), np.zeros(0, np.float32), 16000)
    with pytest.raises(AudioInputError, match="empty"):
        read_input_audio(path)


def test_nan_samples_are_zeroed(tmp_path):
    path = tmp_path / "nan.wav"
    x = _tone(16000)
    x[100:200] = np.nan
    sf.write(str(path), x, 16000, subtype="FLOAT")
    assert np.isfinite(read_input_audio(path).samples).all()


def test_transport_needs_an_input():
    with pytest.raises(AudioInputError, match="needs an input WAV"):
        FileTransport(FileTransportConfig())


def test_recording_places_bot_audio_on_the_input_timeline(tmp_path):
    path = tmp_path / "in.wav"
    sf.write(str(path), _tone(16000, 1.0), 16000)
    transport = FileTransport(FileTransportConfig(input=path), out_sample_rate=24000)
    transport.mark_stream_start(1000.0)
    transport.record_bot_audio(1001.5, np.full(2400, 0.25, np.float32), 24000)
    rec = transport.recording()
    assert rec.shape == (int(1.6 * 24000), 2)
    assert np.abs(rec[: int(1.5 * 24000) - 1, 1]).max() == 0.0
    assert np.allclose(rec[int(1.5 * 24000) :, 1], 0.25)
    assert np.abs(rec[:24000, 0]).max() > 0.3


def test_a_silent_reply_to_the_last_turn_ends_the_wait_for_it(tmp_path):
    # A reply with no speakable text (random weights say "" now and then) used to hold the session
    # for reply_timeout_secs (120 s) waiting for speech that could not come.
    from pipecat.frames.frames import (
        FunctionCallsStartedFrame,
        LLMFullResponseEndFrame,
        LLMFullResponseStartFrame,
        TTSAudioRawFrame,
        UserStoppedSpeakingFrame,
    )

    path = tmp_path / "in.wav"
    sf.write(str(path), _tone(16000), 16000)
    transport = FileTransport(FileTransportConfig(input=path))
    inp, out = transport.input(), transport.output()

    def reply(*middle) -> bool:
        """The user ends a turn, a reply goes out; whether the input still awaits one."""
        inp._track(UserStoppedSpeakingFrame())
        for frame in [LLMFullResponseStartFrame(), *middle, LLMFullResponseEndFrame()]:
            out._track_reply(frame)
        return inp._awaiting_reply_since is not None

    assert not reply()  # silent: nothing to wait for
    audio = TTSAudioRawFrame(audio=b"\0\0" * 480, sample_rate=24000, num_channels=1, context_id="c")
    assert reply(audio)  # audible: its BotStartedSpeakingFrame ends the wait, not this
    assert reply(FunctionCallsStartedFrame(function_calls=[]))  # a tool round: the answer follows
    # A silent reply that began before the last turn ended does not answer it.
    out._track_reply(LLMFullResponseStartFrame())
    inp._track(UserStoppedSpeakingFrame())
    out._track_reply(LLMFullResponseEndFrame())
    assert inp._awaiting_reply_since is not None
