"""Frames this project adds to pipecat's set.

Frames are the only coupling between stages: the turn stage hands the Voxtral stage a whole
utterance in one frame, so the Voxtral stage never needs to know how turns are detected.
"""

from dataclasses import dataclass, field

from pipecat.frames.frames import DataFrame


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
