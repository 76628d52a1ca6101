"""Fixtures and helpers for the Voxtral tests: a session-wide dummy:tiny bundle, utterances, a harness.

Import the fixture into a test module (``from tests.voxtral_fixtures import tiny_bundle_fixture``)
rather than from ``conftest.py``, which other stages share.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from pipecat.frames.frames import EndFrame, Frame, StartFrame
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.workers.runner import WorkerRunner

from voxtral_pipeline.frames import UserUtteranceFrame
from voxtral_pipeline.models.voxtral import VoxtralBundle, load_voxtral
from voxtral_pipeline.testing.voxtral import ForcedGeneration, tiny_ids, tiny_tool_call  # noqa: F401  (re-exported)

#: Fail-safe only: nothing waits for time to pass, this just stops a broken test from hanging.
WAIT_TIMEOUT_S = 60.0


_TINY: dict[str, VoxtralBundle] = {}


# Named apart from its fixture name, so importing it into a test module does not shadow the argument.
@pytest.fixture(scope="session", name="tiny_bundle")
def tiny_bundle_fixture(tmp_path_factory: pytest.TempPathFactory) -> VoxtralBundle:
    """One dummy:tiny model for the whole session, built in a private cache directory.

    Memoized here because each module importing the fixture gets its own definition of it.
    """
    if "bundle" not in _TINY:
        cache = tmp_path_factory.mktemp("voxtral-dummy")
        _TINY["bundle"] = load_voxtral("dummy:tiny", device="cpu", seed=0, cache_dir=cache)
    return _TINY["bundle"]


def make_utterance(secs: float = 1.0, seed: int = 0, sample_rate: int = 16000) -> UserUtteranceFrame:
    """A noise 'utterance' whose speech ended now (wall clock, like the turn stage's marks)."""
    rng = np.random.default_rng(seed)
    samples = (0.1 * rng.standard_normal(int(secs * sample_rate))).astype(np.float32)
    return UserUtteranceFrame.ended_at(samples, sample_rate)


class GenerateSpy:
    """Wraps ``model.generate`` (and optionally ``model.forward``) to count, record, gate or fail calls.

    Attributes:
        calls: Recorded ``generate`` calls: ``{"input_ids": list[int], "output_ids": list[int]}``.
        forward_calls: ``forward`` calls since the last ``generate`` started.
        done: Set whenever a ``generate`` call returns (or raises).
    """

    def __init__(self, model: Any, monkeypatch: pytest.MonkeyPatch):
        self.model = model
        self.calls: list[dict[str, Any]] = []
        self.forward_calls = 0
        self.done = threading.Event()
        self.fail_generate: Exception | None = None
        self.fail_at_forward: tuple[int, Exception] | None = None
        self.gate_at_forward: int | None = None
        #: Gate only the generate() calls whose prompt satisfies this (None: every call).
        self.gate_when: Callable[[list[int]], bool] | None = None
        self._gate_this_call = True
        self.gate = threading.Event()
        self.gate_reached = threading.Event()
        self._generate = model.generate
        self._forward = model.forward
        # wraps() keeps the real signatures: generate() validates its kwargs against forward's.
        monkeypatch.setattr(model, "generate", _wrapping(self._generate, self._spy_generate))
        monkeypatch.setattr(model, "forward", _wrapping(self._forward, self._spy_forward))

    def _spy_generate(self, *args: Any, **kwargs: Any) -> Any:
        self.done.clear()
        self.forward_calls = 0
        record: dict[str, Any] = {"input_ids": kwargs["input_ids"][0].tolist(), "output_ids": None}
        self.calls.append(record)
        self._gate_this_call = self.gate_when is None or self.gate_when(record["input_ids"])
        try:
            if self.fail_generate is not None:
                error, self.fail_generate = self.fail_generate, None
                raise error
            out = self._generate(*args, **kwargs)
            sequences = out.sequences if hasattr(out, "sequences") else out
            record["output_ids"] = sequences[0, len(record["input_ids"]) :].tolist()
            return out
        finally:
            self.done.set()

    def _spy_forward(self, *args: Any, **kwargs: Any) -> Any:
        self.forward_calls += 1
        if self.fail_at_forward is not None and self.forward_calls == self.fail_at_forward[0]:
            error, self.fail_at_forward = self.fail_at_forward[1], None
            raise error
        if (
            self.gate_at_forward is not None
            and self.forward_calls == self.gate_at_forward
            and self._gate_this_call
        ):
            self.gate_reached.set()
            assert self.gate.wait(WAIT_TIMEOUT_S), "test never opened the gate"
        return self._forward(*args, **kwargs)


def _wrapping(original: Callable, spy: Callable) -> Callable:
    @functools.wraps(original)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return spy(*args, **kwargs)

    return wrapper


class _Recorder(FrameProcessor):
    """Records the frames passing in one direction and wakes up waiters."""

    def __init__(self, direction: FrameDirection):
        super().__init__(enable_direct_mode=True)
        self._direction = direction
        self.frames: list[Frame] = []
        self.changed = asyncio.Event()

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if direction == self._direction and not isinstance(frame, StartFrame):
            self.frames.append(frame)
            self.changed.set()
        await self.push_frame(frame, direction)


class StageHarness:
    """Runs one processor in a real pipeline; the test sends frames when it chooses.

    ``run_test`` sends every frame at once; a conversation needs the answer to one turn before
    the next turn is sent, and an interruption needs to land while tokens are streaming.
    """

    def __init__(self, processor: FrameProcessor, params: PipelineParams | None = None):
        self.processor = processor
        self._up = _Recorder(FrameDirection.UPSTREAM)
        self._down = _Recorder(FrameDirection.DOWNSTREAM)
        self.worker = PipelineWorker(
            Pipeline([self._up, processor, self._down]),
            params=params or PipelineParams(enable_metrics=True, enable_usage_metrics=True),
            enable_rtvi=False,
            cancel_on_idle_timeout=False,
        )
        self._started = asyncio.Event()
        self._run_task: asyncio.Task | None = None

        @self.worker.event_handler("on_pipeline_started")
        async def _on_started(worker, frame):
            self._started.set()

    @property
    def down(self) -> list[Frame]:
        return self._down.frames

    @property
    def up(self) -> list[Frame]:
        return self._up.frames

    async def __aenter__(self) -> StageHarness:
        runner = WorkerRunner(handle_sigint=False)
        await runner.add_workers(self.worker)
        self._run_task = asyncio.create_task(runner.run())
        await asyncio.wait_for(self._started.wait(), WAIT_TIMEOUT_S)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.worker.queue_frame(EndFrame())
        assert self._run_task is not None
        await asyncio.wait_for(self._run_task, WAIT_TIMEOUT_S)

    async def send(self, frame: Frame) -> None:
        await self.worker.queue_frame(frame)

    async def wait_down(self, predicate: Callable[[list[Frame]], bool]) -> None:
        """Wait until the downstream frames satisfy ``predicate``."""
        await _wait(self._down, predicate)

    async def wait_up(self, predicate: Callable[[list[Frame]], bool]) -> None:
        await _wait(self._up, predicate)


async def _wait(recorder: _Recorder, predicate: Callable[[list[Frame]], bool]) -> None:
    async def _loop() -> None:
        while not predicate(recorder.frames):
            recorder.changed.clear()
            await recorder.changed.wait()

    await asyncio.wait_for(_loop(), WAIT_TIMEOUT_S)


def count(frame_type: type, n: int = 1) -> Callable[[list[Frame]], bool]:
    """Predicate: at least ``n`` frames of ``frame_type``."""
    return lambda frames: sum(isinstance(f, frame_type) for f in frames) >= n


async def wait_until(predicate: Callable[[], bool], what: str) -> None:
    """Fail-safe wait for something another thread or task does (no timing is asserted)."""
    for _ in range(int(WAIT_TIMEOUT_S / 0.01)):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")
