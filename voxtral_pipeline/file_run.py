"""The file bot's run: it never harms a file, and Ctrl-C or SIGTERM stop it within a second.

Before any model loads, the input, output and report are checked to be three different files and
the output locations writable (:func:`~voxtral_pipeline.transports.file.check_file_paths`). Both
outputs are written atomically. A first SIGINT or SIGTERM asks the session to stop; what was heard
so far is written, the report marked ``"complete": false`` with the point of the input reached,
and the exit code is 128 + the signal (130, 143). A watchdog thread makes that happen within
:data:`GRACE_SECS` whatever the run is doing (a model still loading in a thread, a stuck task); a
second signal stops at once.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from loguru import logger

#: How long a signalled run may take to stop by itself before the watchdog writes and exits.
GRACE_SECS = 0.5
SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(BaseException):
    """A stop signal that came before the session ran (raised from the signal handler)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def exit_code(signum: int) -> int:
    """The shell's code for a run ended by ``signum`` (130 for SIGINT, 143 for SIGTERM)."""
    return 128 + signum


class Stopper:
    """SIGINT/SIGTERM handling for one CLI run, installed before anything slow happens.

    Before the session runs, a signal raises :class:`Interrupted` where the main thread is; while
    it runs, the signal asks it to stop (``on_stop``). Either way a watchdog thread calls
    ``finish`` and ends the process with 128 + the signal if the run has not returned within
    :data:`GRACE_SECS`; a second signal does so at once.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._on_stop: Callable[[], None] | None = None
        self._finish: Callable[[int], None] | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        for sig in SIGNALS:
            self._previous[sig] = signal.signal(sig, self._on_signal)

    def uninstall(self) -> None:
        """Give the signals back to the handlers they had (transports with their own handling)."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def running(self, on_stop: Callable[[], None], finish: Callable[[int], None]) -> None:
        """From now on a signal calls ``on_stop`` (thread-safe) instead of raising."""
        self._on_stop, self._finish = on_stop, finish
        if self.signum is not None:
            on_stop()

    def _on_signal(self, signum: int, _frame: Any) -> None:
        if self.signum is not None:  # a second signal: no more waiting
            self._exit_now()
        self.signum = signum
        # os.write, not the logger or print: the handler may run inside a logging call's lock.
        os.write(2, f"voxtral-pipeline: {signal.Signals(signum).name}: stopping\n".encode())
        threading.Thread(target=self._watchdog, name="stop-watchdog", daemon=True).start()
        if self._on_stop is None:
            raise Interrupted(signum)
        self._on_stop()

    def _watchdog(self) -> None:
        time.sleep(GRACE_SECS)
        self._exit_now()

    def _exit_now(self) -> None:
        signum = self.signum or signal.SIGINT
        try:
            if self._finish is not None:
                self._finish(signum)
        except BaseException as e:  # exiting anyway; say why the files may be missing
            print(f"voxtral-pipeline: error: could not write the results: {e}", file=sys.stderr)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(exit_code(signum))


class FileResults:
    """Writes the file bot's recording and report once: complete, or as far as the run got."""

    def __init__(self, config, transport, voice):
        self._file = config.transport.file
        self._transport = transport
        self._voice = voice
        self._lock = threading.RLock()  # a second signal runs in the thread that may be writing
        self.written = False

    def write(self, report: dict[str, Any] | None, signum: int | None) -> None:
        """Write both files (``report`` None: build it from what the metrics stage holds now)."""
        if not self._lock.acquire(timeout=10):  # another thread is writing; let it finish
            return
        try:
            if self.written:
                return
            self.written = True
            self._write(report, signum)
        finally:
            self._lock.release()

    def _write(self, report: dict[str, Any] | None, signum: int | None) -> None:
        from voxtral_pipeline.transports.file import atomic_write

        if report is None:
            try:
                report = self._voice.metrics.report()
            except Exception as e:  # mid-turn state: keep the facts that are known
                report = {"turns": [], "summary": {"turns": 0}, "report_error": str(e)}
        audio = self._transport.input_audio
        status: dict[str, Any] = {
            "complete": signum is None,
            "input_secs": round(audio.duration_secs, 3),
            "input_secs_reached": round(self._transport.played_secs, 3),
        }
        if signum is not None:
            status["interrupted_by"] = signal.Signals(signum).name
        report = {**status, **report}
        if self._file.output:
            path = self._transport.write_recording(self._file.output)
            logger.info(f"wrote {path} (left: user, right: bot)")
        if self._file.report:
            text = json.dumps(report, indent=2) + "\n"
            path = atomic_write(self._file.report, lambda tmp: tmp.write_text(text, encoding="utf-8"))
            logger.info(f"wrote {path}")
        if signum is not None:
            print(
                f"voxtral-pipeline: interrupted ({status['interrupted_by']}) at "
                f"{status['input_secs_reached']:.1f} s of {status['input_secs']:.1f} s of "
                f"{self._file.input}; {report['summary'].get('turns', 0)} turns heard; "
                "the report says complete: false",
                file=sys.stderr,
            )


def run_file_session(config, transport, voice, stopper: Stopper) -> tuple[dict[str, Any], int | None]:
    """Run the session and write its files; return the report and the stop signal (None: finished).

    Nothing is written when a stage failed for good (``voice.fatal_error``): the caller says why.
    """
    results = FileResults(config, transport, voice)

    async def run() -> dict[str, Any]:
        loop = asyncio.get_running_loop()

        def stop() -> None:
            try:
                loop.call_soon_threadsafe(
                    lambda: asyncio.ensure_future(voice.worker.cancel(reason="interrupted"))
                )
            except RuntimeError:  # the loop has already finished: nothing left to stop
                pass

        stopper.running(stop, lambda signum: results.write(None, signum))
        report = await voice.run()
        # Written here, before asyncio.run() waits for its worker threads (a model still loading).
        if stopper.signum is not None or voice.fatal_error is None:
            results.write(report, stopper.signum)
        return report

    report = asyncio.run(run())
    return report, stopper.signum
