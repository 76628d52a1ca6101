"""Frames this project adds to pipecat's set.

Frames are the only coupling between stages: the turn stage hands the Voxtral stage a whole
utterance in one frame, so the Voxtral stage never needs to know how turns are detected.
"""

import time
from dataclasses import dataclass, field

import numpy as np
from pipecat.frames.frames import DataFrame, SystemFrame, TextFrame

from voxtral_pipeline.audio import float_to_pcm16


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
        confirms_speculation: The user said nothing more since the last
            :class:`SpeculativeUtteranceFrame`: the answer started on it answers this turn.
    """

    audio: bytes
    sample_rate: int
    speech_start_time: float
    speech_end_time: float
    vad_stop_time: float
    turn_end_time: float
    num_channels: int = field(default=1)
    confirms_speculation: bool = field(default=False)

    @property
    def duration_secs(self) -> float:
        """Length of the utterance audio in seconds."""
        return len(self.audio) / (2 * self.num_channels * self.sample_rate)

    @classmethod
    def ended_at(
        cls, samples: np.ndarray, sample_rate: int = 16000, end_time: float | None = None
    ) -> "UserUtteranceFrame":
        """An utterance of float ``samples`` whose speech ended at ``end_time`` (now by default).

        For feeding the Voxtral stage without a turn stage (benchmarks, tests, a custom turn
        detector): every mark of the turn is the end of the speech.
        """
        end = time.time() if end_time is None else end_time
        return cls(
            audio=float_to_pcm16(samples),
            sample_rate=sample_rate,
            speech_start_time=end - len(samples) / sample_rate,
            speech_end_time=end,
            vad_stop_time=end,
            turn_end_time=end,
        )

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


@dataclass
class SpeculativeUtteranceFrame(DataFrame):
    """The user's audio up to a VAD stop, before Smart Turn has confirmed the end of the turn.

    The Voxtral stage may start answering it at once and hold the answer back: a following
    ``UserUtteranceFrame`` with ``confirms_speculation`` releases it, a
    :class:`SpeculationCancelFrame` (the user went on speaking) discards it unheard.
    """

    utterance: UserUtteranceFrame


@dataclass
class SpeculationCancelFrame(DataFrame):
    """The user went on speaking after a VAD stop: the last speculative utterance is void."""


@dataclass
class UserTurnIgnoredFrame(SystemFrame):
    """A user turn ended without an utterance to answer (too short: a cough, a click).

    Sent both ways by the turn stage, so that whoever waits for an answer to every
    ``UserStoppedSpeakingFrame`` (the file transport, clients) stops waiting.
    """

    reason: str


@dataclass
class BotSpokenTextFrame(SystemFrame):
    """What the listener actually heard of the bot's answer, sent upstream from after the output.

    The output transport lets each ``TTSTextFrame`` through only once the audio before it has
    been played, and drops the queued rest at an interruption; this frame carries the text that
    got through, so the Voxtral stage keeps in its context only what the bot really said.

    Parameters:
        text: The answer's text as played (whole TTS chunks).
        interrupted: True when an interruption cut the answer off; False when it was played to its end.
    """

    text: str
    interrupted: bool


@dataclass
class BotAudioStoppedFrame(SystemFrame):
    """When the bot fell silent after an interruption, sent upstream for the barge-in time.

    Parameters:
        interruption_time: When the output side received the interruption (wall clock).
        last_audio_time: When the last bot audio sample was heard (wall clock; the end of the last
            frame the output transport wrote), None if no audio had been played.
    """

    interruption_time: float
    last_audio_time: float | None
