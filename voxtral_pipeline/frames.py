"""Frames this project adds to pipecat's set.

Frames are the only coupling between stages: the turn stage hands the Voxtral stage a whole
utterance in one frame, so the Voxtral stage never needs to know how turns are detected.
"""

from dataclasses import dataclass, field

from pipecat.frames.frames import DataFrame, SystemFrame, TextFrame


@dataclass
class UserUtteranceFrame(DataFrame):
    """A whole user turn, ready for one speech-LLM inference.

    All times are wall-clock seconds (``time.time()``), the clock pipecat's VAD frames and
    ``UserBotLatencyObserver`` use, so every stage's marks can be compared.

    Parameters:
        audio: 16-bit mono PCM of the utterance, pre-roll included.
        sample_rate: Sample rate of ``audio``.
        speech_start_time: When the user really started speaking (VAD start minus its wait).
        speech_end_time: When the user really stopped speaking (last VAD stop minus its wait).
        vad_stop_time: When the VAD declared the last stop.
        turn_end_time: When the end of the turn was confirmed (Smart Turn or the silence fallback).
    """

    audio: bytes
    sample_rate: int
    speech_start_time: float
    speech_end_time: float
    vad_stop_time: float
    turn_end_time: float
    num_channels: int = field(default=1)

    @property
    def duration_secs(self) -> float:
        """Length of the utterance audio in seconds."""
        return len(self.audio) / (2 * self.num_channels * self.sample_rate)

    def __str__(self):
        return f"{self.name}(duration: {self.duration_secs:.2f}s, sample_rate: {self.sample_rate})"


@dataclass
class DisplayTextFrame(TextFrame):
    """Bot text for transcripts and clients, one complete word (with its spacing) per frame.

    The word chunker sends every word as soon as it is complete, ahead of the speech chunks that
    carry the same text to the TTS stage. ``skip_tts`` is set, so pipecat's ``TTSService`` pushes
    it on at once instead of speaking it (or re-aggregating it behind the audio, as it does with
    a skipped ``LLMTextFrame``); ``append_to_context`` is off, so an assistant aggregator that
    sees it does not store the reply twice (the spoken ``TTSTextFrame``s carry it).
    """

    def __post_init__(self):
        super().__post_init__()
        self.skip_tts = True
        self.append_to_context = False
        self.includes_inter_frame_spaces = True


@dataclass
class SynthesisSpeedFrame(SystemFrame):
    """How fast the TTS stage synthesizes, sent upstream to the word chunker after each chunk.

    Parameters:
        rtf: real-time factor, seconds of synthesis per second of (trimmed) speech; below 1 the
            TTS is faster than playback. The adaptive chunker sizes chunks so each one's synthesis
            fits in the audio already queued ahead of it.
    """

    rtf: float
