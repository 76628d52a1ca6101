"""What a process holds (memory, threads, tasks, KV caches): for soak tests and benchmarks."""

from __future__ import annotations

import asyncio
import gc
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def _trim_heap() -> None:
    """Give freed heap pages back to the OS (glibc keeps them otherwise), so RSS shows what is held."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: RSS is a little noisier, nothing more
        pass


def rss_mb() -> float:
    """Resident memory of this process in MiB (Linux /proc)."""
    import os

    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


@dataclass
class Snapshot:
    """What a process holds that a finished session must give back."""

    rss_mb: float
    threads: list[str]
    tasks: list[str]
    cached_sessions: list[str] = field(default_factory=list)
    cache_mb: float = 0.0

    @classmethod
    def take(cls, engine: Any = None) -> Snapshot:
        gc.collect()
        _trim_heap()
        tasks = [t.get_name() for t in asyncio.all_tasks() if not t.done()]
        return cls(
            rss_mb(),
            sorted(t.name for t in threading.enumerate()),
            sorted(tasks),
            engine.cached_sessions if engine is not None else [],
            engine.cache_bytes() / 2**20 if engine is not None else 0.0,
        )
