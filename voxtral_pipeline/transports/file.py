"""File transport: a WAV file streamed in real time like a microphone, both sides recorded.

The input plays the file as 20 ms frames at real-time pace (the pipeline cannot tell it from a
microphone), then streams silence until the bot has answered the last turn. The output plays the
bot's audio in real time, as a speaker would, and records it on the input's timeline: the result is
a two-channel WAV, left the user and right the bot, each sample placed where a listener would have
heard it.

For barge-in tests and benchmarks, :class:`PlaybackCue` holds the input at a point of the file
(streaming silence) until the bot has been speaking for a while, so the speech that follows is
sure to land while the bot talks, however fast the machine; the recording and the report follow
the input as streamed, holds included.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from loguru import logger
from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    EndFrame,
    EndWorkerFrame,
    Frame,
    FunctionCallsStartedFrame,
    InputAudioRawFrame,
    InterruptionFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    OutputAudioRawFrame,
    StartFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from pipecat.processors.frame_processor import FrameDirection
from pipecat.transports.base_input import BaseInputTransport
from pipecat.transports.base_output import BaseOutputTransport
from pipecat.transports.base_transport import BaseTransport, TransportParams

from voxtral_pipeline.audio import float_to_pcm16, pcm16_to_float, resample
from voxtral_pipeline.config import FileTransportConfig
from voxtral_pipeline.frames import UserTurnIgnoredFrame

FRAME_SECS = 0.02


class AudioInputError(Exception):
    """An input file that cannot be used; the message is meant for the user as is."""


class OutputPathError(AudioInputError):
    """An output or report path that would harm a file or cannot be written; said before any model loads."""


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino


def check_file_paths(input: str | Path, **outputs: str | Path | None) -> None:
    """Refuse outputs that would overwrite the input or each other, or that cannot be written.

    ``outputs`` maps a name (``output``, ``report``) to a path or None. Files are compared by
    resolved path and, where they exist, by device and inode (a hard link or a second path to the
    same file is the same file). Each output's directory is made if missing and a temporary file is
    created and removed in it, the way the result will be written (:func:`atomic_write`): a
    directory, a device, ``/proc`` or a read-only place is found now, not after the whole run.

    Raises:
        OutputPathError: with a message for the user.
    """
    seen: list[tuple[str, Path, tuple[int, int] | None]] = [
        ("input", Path(input).resolve(), _identity(Path(input)))
    ]
    for name, given in outputs.items():
        if given is None:
            continue
        path = Path(given)
        resolved, ident = path.resolve(), _identity(path)
        for other, other_path, other_ident in seen:
            if resolved == other_path or (ident is not None and ident == other_ident):
                raise OutputPathError(
                    f"--{name} {given} is the same file as the --{other}: refusing to overwrite it"
                )
        seen.append((name, resolved, ident))
        if path.is_dir():
            raise OutputPathError(f"--{name} {given} is a directory, not a file")
        if path.exists() and not path.is_file():
            raise OutputPathError(f"--{name} {given} exists and is not a regular file")
        try:
            resolved.parent.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(prefix=f".{resolved.name}.", suffix=".probe", dir=resolved.parent)
            os.close(fd)
            os.unlink(probe)
        except OSError as e:
            raise OutputPathError(f"cannot write --{name} {given}: {e.strerror or e}") from None


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Write a file under a temporary name in its directory, then rename it into place.

    ``write`` gets the temporary path. A run that fails or is killed mid-write leaves the old
    file (if any) as it was and no half-written one; the temporary file is removed on failure.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


@dataclass(frozen=True)
class PlaybackCue:
    """Hold the input at ``at_secs`` of the file until the bot has been speaking ``bot_speaking_secs``.

    While held, silence is streamed. The hold ends anyway after ``max_wait_secs`` (a bot that never
    speaks), with a warning.
    """

    at_secs: float
    bot_speaking_secs: float = 0.5
    max_wait_secs: float = 60.0


@dataclass
class InputAudio:
    """Input samples, mono float32 at ``sample_rate``, plus what the file was."""

    samples: np.ndarray
    sample_rate: int
    source_rate: int
    source_channels: int

    @property
    def duration_secs(self) -> float:
        return len(self.samples) / self.sample_rate


def read_input_audio(path: str | Path, sample_rate: int = 16000) -> InputAudio:
    """Read any WAV (any rate, mono or stereo, int or float) as mono float32 at ``sample_rate``.

    Raises:
        AudioInputError: missing file, not audio, or no samples.
    """
    path = Path(path)
    if not path.exists():
        raise AudioInputError(f"input file not found: {path}")
    if not path.is_file():
        raise AudioInputError(f"input is not a file: {path}")
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as e:  # libsndfile's message says what it could not parse
        raise AudioInputError(f"input is not a readable audio file: {path} ({e})") from None
    if data.shape[0] == 0:
        raise AudioInputError(f"input audio file is empty (no samples): {path}")
    channels = data.shape[1]
    mono = data.mean(axis=1) if channels > 1 else data[:, 0]
    mono = np.nan_to_num(mono, nan=0.0, posinf=1.0, neginf=-1.0)
    return InputAudio(resample(mono, rate, sample_rate), sample_rate, rate, channels)


class FileInputTransport(BaseInputTransport):
    """Streams the input file in 20 ms frames at real-time pace, then silence until the bot is done.

    It ends the session (``EndWorkerFrame``) once the file and ``tail_secs`` of silence have been
    played, no user turn is open, the last turn has been answered (or ``reply_timeout_secs``
    passed), and the bot has been quiet for ``idle_secs``.
    """

    def __init__(
        self,
        transport: FileTransport,
        audio: InputAudio,
        config: FileTransportConfig,
        params,
        cues: list[PlaybackCue] | None = None,
    ):
        super().__init__(params)
        self._transport = transport
        self._audio = audio
        self._config = config
        self._cues = sorted(cues or [], key=lambda c: c.at_secs)
        self._stream_task: asyncio.Task | None = None
        self._user_in_turn = False
        self._awaiting_reply_since: float | None = None
        self._bot_speaking = False
        self._bot_started_at: float | None = None
        self._last_bot_activity = 0.0

    async def start(self, frame: StartFrame):
        await super().start(frame)
        await self.set_transport_ready(frame)
        # Stages load and warm their models in setup(), concurrently; the StartFrame reaches this
        # transport first. Play the file only once every stage has started, as a user would only
        # start talking once the bot is there.
        worker = self.processor_setup.pipeline_worker if self.processor_setup else None
        if worker is not None:
            worker.add_event_handler("on_pipeline_started", self._on_pipeline_started)
        else:
            self._begin()

    async def _on_pipeline_started(self, _worker, _frame):
        self._begin()

    def _begin(self):
        if not self._stream_task:
            self._stream_task = self.create_task(self._stream(), "file_input_stream")

    async def stop(self, frame: EndFrame):
        await self._cancel_stream()
        await super().stop(frame)

    async def cancel(self, frame):
        await self._cancel_stream()
        await super().cancel(frame)

    async def _cancel_stream(self):
        if self._stream_task:
            await self.cancel_task(self._stream_task)
            self._stream_task = None

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        if direction == FrameDirection.UPSTREAM:
            self._track(frame)
        await super().process_frame(frame, direction)

    def _track(self, frame: Frame):
        now = time.time()
        if isinstance(frame, UserStartedSpeakingFrame):
            self._user_in_turn = True
        elif isinstance(frame, UserStoppedSpeakingFrame):
            self._user_in_turn = False
            self._awaiting_reply_since = now
        elif isinstance(frame, UserTurnIgnoredFrame):
            self._awaiting_reply_since = None  # nothing to answer (a cough): no reply is coming
        elif isinstance(frame, BotStartedSpeakingFrame):
            self._bot_speaking = True
            self._bot_started_at = now
            self._awaiting_reply_since = None
            self._last_bot_activity = now
        elif isinstance(frame, BotStoppedSpeakingFrame):
            self._bot_speaking = False
            self._bot_started_at = None
            self._last_bot_activity = now

    def reply_was_silent(self, started_at: float) -> None:
        """A reply that began at ``started_at`` ended with no audio and no tool call (the model
        said nothing speakable): when it answers the last turn, no speech is coming, so the
        session need not wait ``reply_timeout_secs`` for it."""
        if self._awaiting_reply_since is not None and started_at >= self._awaiting_reply_since:
            logger.debug(f"{self}: the last turn's reply was silent")
            self._awaiting_reply_since = None
            self._last_bot_activity = time.time()

    def _done(self, now: float) -> bool:
        if self._user_in_turn or self._bot_speaking:
            return False
        if self._awaiting_reply_since is not None:
            if now - self._awaiting_reply_since < self._config.reply_timeout_secs:
                return False
            logger.warning(f"{self}: no reply within {self._config.reply_timeout_secs:.0f}s, ending")
            return True
        return now - self._last_bot_activity >= self._config.idle_secs

    def _hold(self, cue: PlaybackCue, since: float, now: float) -> bool:
        """Whether the input is still held at ``cue`` (held since ``since``)."""
        if self._bot_started_at is not None and now - self._bot_started_at >= cue.bot_speaking_secs:
            return False
        if now - since >= cue.max_wait_secs:
            logger.warning(
                f"{self}: the bot did not speak within {cue.max_wait_secs:.0f}s of the cue at "
                f"{cue.at_secs:.2f}s; playing on"
            )
            return False
        return True

    async def _stream(self):
        rate = self._audio.sample_rate
        step = int(rate * FRAME_SECS)
        pcm = float_to_pcm16(self._audio.samples)
        bytes_per_frame = step * 2
        silence = b"\x00" * bytes_per_frame
        start = time.monotonic()
        self._transport.mark_stream_start(time.time())
        logger.info(f"playing {self._config.input} ({self._audio.duration_secs:.1f} s)")
        cues = list(self._cues)
        held_since: float | None = None
        n = 0
        offset = 0
        while True:
            if cues and offset >= int(cues[0].at_secs * rate) * 2 and offset < len(pcm):
                now = time.time()
                held_since = held_since or now
                if self._hold(cues[0], held_since, now):
                    await self._push_input(silence)
                    n += 1
                    self._transport.note_hold(offset / 2 / rate, FRAME_SECS)
                    delay = start + n * FRAME_SECS - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    continue
                cues.pop(0)
                held_since = None
            if offset < len(pcm):
                chunk = pcm[offset : offset + bytes_per_frame]
                chunk += b"\x00" * (bytes_per_frame - len(chunk))
                offset += bytes_per_frame
                self._transport.played_secs = min(offset, len(pcm)) / 2 / rate
            else:
                chunk = silence
                if n * FRAME_SECS >= self._audio.duration_secs + self._config.tail_secs and self._done(
                    time.time()
                ):
                    break
            await self._push_input(chunk)
            n += 1
            # Absolute schedule: no drift however long each push takes.
            delay = start + n * FRAME_SECS - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        logger.debug(f"{self}: input played ({self._audio.duration_secs:.2f}s) and bot idle, ending session")
        await self.push_frame(EndWorkerFrame(reason="input file played"), FrameDirection.UPSTREAM)

    async def _push_input(self, chunk: bytes):
        self._transport.record_user_audio(chunk)
        rate = self._audio.sample_rate
        await self.push_audio_frame(InputAudioRawFrame(audio=chunk, sample_rate=rate, num_channels=1))


class FileOutputTransport(BaseOutputTransport):
    """Plays bot audio in real time and records each sample at the moment it would be heard."""

    def __init__(self, transport: FileTransport, params: TransportParams):
        super().__init__(params)
        self._transport = transport
        self._next_play_time = 0.0
        # The reply going out: (when it started, whether it had audio or a tool call), or None.
        self._reply: tuple[float, bool] | None = None

    async def start(self, frame: StartFrame):
        await super().start(frame)
        await self.set_transport_ready(frame)

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        if isinstance(frame, InterruptionFrame):
            # Pipecat's base class drops the queued audio; the frame being written plays to its end.
            self._transport.mark_interruption(time.time())
        if direction == FrameDirection.DOWNSTREAM:
            self._track_reply(frame)
        await super().process_frame(frame, direction)

    def _track_reply(self, frame: Frame) -> None:
        # pipecat's TTS queues a reply's end behind its audio, so the audio (if any) arrives first.
        if isinstance(frame, LLMFullResponseStartFrame):
            self._reply = (time.time(), False)
        elif self._reply is None:
            return
        elif isinstance(frame, (OutputAudioRawFrame, FunctionCallsStartedFrame)):
            self._reply = (self._reply[0], True)
        elif isinstance(frame, LLMFullResponseEndFrame):
            started_at, heard = self._reply
            self._reply = None
            if not heard:
                self._transport.input().reply_was_silent(started_at)

    async def write_audio_frame(self, frame: OutputAudioRawFrame) -> bool:
        samples = pcm16_to_float(frame.audio)
        if frame.num_channels > 1:
            samples = samples.reshape(-1, frame.num_channels).mean(axis=1)
        now = time.time()
        play_at = max(now, self._next_play_time)
        self._transport.record_bot_audio(play_at, samples, frame.sample_rate)
        duration = len(samples) / frame.sample_rate
        self._next_play_time = play_at + duration
        # A speaker takes the frame's duration to play it: pace like one.
        await asyncio.sleep(max(0.0, self._next_play_time - time.time() - 0.005))
        return True


class FileTransport(BaseTransport):
    """WAV file in, stereo WAV (user left, bot right) out."""

    def __init__(
        self,
        config: FileTransportConfig,
        *,
        in_sample_rate: int = 16000,
        out_sample_rate: int = 24000,
        cues: list[PlaybackCue] | None = None,
    ):
        super().__init__()
        if config.input is None:
            raise AudioInputError("the file transport needs an input WAV (--input IN.wav)")
        self._config = config
        self._audio = read_input_audio(config.input, in_sample_rate)
        self._out_rate = out_sample_rate
        self._stream_start: float | None = None
        self._bot_segments: list[tuple[float, np.ndarray]] = []
        self._user_pcm = bytearray()  # the input as streamed (holds included)
        self._holds: list[tuple[float, float]] = []  # (file secs, secs of silence inserted there)
        self._interruptions: list[float] = []
        #: Seconds of the input file played so far (the point an interrupted run reached).
        self.played_secs = 0.0
        in_params = TransportParams(audio_in_enabled=True, audio_in_sample_rate=in_sample_rate)
        out_params = TransportParams(
            audio_out_enabled=True,
            audio_out_sample_rate=out_sample_rate,
            audio_out_10ms_chunks=2,
            audio_out_end_silence_secs=0,
        )
        self._input = FileInputTransport(self, self._audio, config, in_params, cues)
        self._output = FileOutputTransport(self, out_params)

    @property
    def input_audio(self) -> InputAudio:
        return self._audio

    @property
    def stream_start(self) -> float | None:
        """Wall-clock time the first input sample was played."""
        return self._stream_start

    def input(self) -> FileInputTransport:
        return self._input

    def output(self) -> FileOutputTransport:
        return self._output

    def mark_stream_start(self, at: float) -> None:
        self._stream_start = at

    def record_bot_audio(self, at: float, samples: np.ndarray, sample_rate: int) -> None:
        if sample_rate != self._out_rate:
            samples = resample(samples, sample_rate, self._out_rate)
        self._bot_segments.append((at, samples))

    def record_user_audio(self, pcm: bytes) -> None:
        self._user_pcm.extend(pcm)

    def note_hold(self, at_file_secs: float, secs: float) -> None:
        if self._holds and self._holds[-1][0] == at_file_secs:
            self._holds[-1] = (at_file_secs, self._holds[-1][1] + secs)
        else:
            self._holds.append((at_file_secs, secs))

    def mark_interruption(self, at: float) -> None:
        self._interruptions.append(at)

    @property
    def interruptions(self) -> list[float]:
        """Wall-clock times the output received an ``InterruptionFrame``."""
        return list(self._interruptions)

    def stream_secs(self, file_secs: float) -> float:
        """Where a point of the input file was streamed, in seconds from the stream start (holds added)."""
        return file_secs + sum(secs for at, secs in self._holds if at <= file_secs)

    def bot_audio_secs(self) -> float:
        return sum(len(s) for _, s in self._bot_segments) / self._out_rate

    def bot_audio_spans(self) -> list[tuple[float, float]]:
        """Every bot audio frame as (start, end) wall-clock seconds, when a listener heard it."""
        return [(at, at + len(s) / self._out_rate) for at, s in self._bot_segments]

    def recording(self) -> np.ndarray:
        """The conversation as ``(n, 2)`` float32 at the output rate: left user, right bot."""
        rate = self._out_rate
        streamed = pcm16_to_float(bytes(self._user_pcm)) if self._user_pcm else self._audio.samples
        user = resample(streamed, self._audio.sample_rate, rate)
        origin = self._stream_start or 0.0
        placed = [(max(0, int(round((at - origin) * rate))), s) for at, s in self._bot_segments]
        length = max([len(user)] + [i + len(s) for i, s in placed])
        out = np.zeros((length, 2), dtype=np.float32)
        out[: len(user), 0] = user
        for i, s in placed:
            out[i : i + len(s), 1] += s
        return out

    def write_recording(self, path: str | Path) -> Path:
        """Write the stereo recording atomically (a temporary file renamed into place)."""
        recording = self.recording()
        return atomic_write(
            path, lambda tmp: sf.write(str(tmp), recording, self._out_rate, subtype="PCM_16", format="WAV")
        )
