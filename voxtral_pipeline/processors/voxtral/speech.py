"""A spoken turn in pipecat's pipeline: the audio between the user aggregator's turn frames.

The user aggregator's turn strategies (Silero VAD, Smart Turn) say when the user's turn starts
and stops (``UserStartedSpeakingFrame`` / ``UserStoppedSpeakingFrame``); the audio itself passes
through as ``InputAudioRawFrame``\\ s. As pipecat's ``NvidiaOmniLLMService`` does, the Voxtral
stage keeps that audio, with a short margin from before the start, and answers it at the stop.
"""

from __future__ import annotations

import time

import numpy as np
from pipecat.frames.frames import InputAudioRawFrame

from voxtral_pipeline.audio import float_to_pcm16, pcm16_to_float, resample
from voxtral_pipeline.frames import UserUtteranceFrame

PRE_SPEECH_SECS = 0.2  # audio kept from before the aggregator's turn start (as NvidiaOmni keeps)


class SpeechBuffer:
    """The user's audio between the user aggregator's turn frames, with a short pre-speech margin."""

    def __init__(self) -> None:
        self._chunks: list[InputAudioRawFrame] = []
        self._speaking = False
        self._started_at = 0.0

    def add(self, frame: InputAudioRawFrame) -> None:
        self._chunks.append(frame)
        if not self._speaking:  # keep only the pre-speech margin
            secs = 0.0
            for i in range(len(self._chunks) - 1, -1, -1):
                c = self._chunks[i]
                secs += len(c.audio) / (2 * c.num_channels * c.sample_rate)
                if secs > PRE_SPEECH_SECS:
                    del self._chunks[:i]
                    break

    def start(self) -> None:
        if not self._speaking:
            self._speaking = True
            self._started_at = time.time()

    def interrupted(self) -> None:
        """An interruption is the start of the user's turn, not its end: keep what was heard."""

    def stop(self) -> UserUtteranceFrame | None:
        """The turn's audio as one utterance (16-bit mono at the input rate), or None if none came."""
        if not self._speaking:
            return None
        self._speaking = False
        chunks, self._chunks = self._chunks, []
        if not chunks:
            return None
        rate = chunks[0].sample_rate
        parts = []
        for c in chunks:
            samples = pcm16_to_float(c.audio)
            if c.num_channels > 1:
                samples = samples.reshape(-1, c.num_channels).mean(axis=1)
            parts.append(resample(samples, c.sample_rate, rate))
        pcm = float_to_pcm16(np.concatenate(parts))
        now = time.time()
        return UserUtteranceFrame(
            audio=pcm,
            sample_rate=rate,
            speech_start_time=self._started_at,
            speech_end_time=now,
            vad_stop_time=now,
            turn_end_time=now,
        )
