"""Per-session KV caches: reuse up to the common prefix with the next prompt, bounded in size.

Each session keeps its cache between turns: the new prompt is compared with the cached ids, the
cache is cropped to the common prefix (never inside an audio block, whose features are encoded in
one piece), and only the uncached suffix is prefilled. Caches are bounded per session (cropped to
``max_tokens``) and across sessions (least recently used evicted past ``max_sessions``).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch
from loguru import logger

from voxtral_pipeline.engine.tokens import SpecialTokens


@dataclass
class _SessionCache:
    ids: list[int]
    cache: Any


class SessionKVStore:
    """The KV caches of every session of one engine (thread-safe: sessions are released anywhere)."""

    def __init__(
        self,
        model_config: Any,
        tokens: SpecialTokens,
        *,
        enabled: bool = True,
        max_tokens: int = 16384,
        max_sessions: int = 16,
        static: bool = False,
    ):
        self._model_config = model_config
        self._tokens = tokens
        self.enabled = enabled
        self.max_tokens = max_tokens
        self.max_sessions = max_sessions
        self.static = static
        self._caches: OrderedDict[str, _SessionCache] = OrderedDict()
        # Sessions released while one of their requests was queued or running: whatever that
        # request leaves must not be cached again (it would outlive its session).
        self._released: set[str] = set()
        self._lock = threading.Lock()

    @property
    def sessions(self) -> list[str]:
        with self._lock:
            return list(self._caches)

    def tokens(self, session_id: str) -> int:
        with self._lock:
            entry = self._caches.get(session_id)
            return 0 if entry is None else len(entry.ids)

    def bytes(self) -> int:
        with self._lock:
            caches = [entry.cache for entry in self._caches.values()]
        return sum(_storage_bytes(cache) for cache in caches)

    def release(self, session_id: str, *, pending: bool) -> None:
        """Forget a session's cache; with ``pending`` work, also what that work would leave."""
        with self._lock:
            self._caches.pop(session_id, None)
            if pending:
                self._released.add(session_id)

    def unreleased(self, session_id: str) -> None:
        """The session is in use again (a new request), or its last pending request ended."""
        with self._lock:
            self._released.discard(session_id)

    def drop(self, session_id: str) -> bool:
        with self._lock:
            return self._caches.pop(session_id, None) is not None

    def clear(self) -> int:
        with self._lock:
            n = len(self._caches)
            self._caches.clear()
            return n

    def take(self, session_id: str | None, ids: list[int], max_new: int = 0) -> tuple[Any, int]:
        """The session's cache cropped to the common prefix with ``ids``, and that prefix's length."""
        needed = len(ids) + max_new
        with self._lock:
            entry = self._caches.get(session_id) if (self.enabled and session_id) else None
            if entry is not None and is_static(entry.cache) and needed > self.max_tokens:
                del self._caches[session_id]  # a preallocated cache cannot grow: start a dynamic one
                entry = None
            if entry is not None:
                self._caches.move_to_end(session_id)
        if entry is None:
            return self._new(needed), 0
        p = min(self._common_prefix(entry.ids, ids), len(ids) - 1)  # one new token at least, for the logits
        crop(entry.cache, p)
        # Cropped in place: the entry must say so, whether or not the taker keeps a new one.
        entry.ids = entry.ids[:p]
        return entry.cache, p

    def prefix(self, session_id: str, ids: list[int]) -> int:
        """How much of ``ids`` the session's cache holds; unlike :meth:`take`, the cache is untouched."""
        with self._lock:
            entry = self._caches.get(session_id) if self.enabled else None
            cached = entry.ids if entry is not None else []
        return self._common_prefix(cached, ids)

    def _common_prefix(self, cached: list[int], ids: list[int]) -> int:
        p = 0
        limit = min(len(cached), len(ids))
        while p < limit and cached[p] == ids[p]:
            p += 1
        # Never split an audio block: its features are encoded in one piece.
        audio, begin = self._tokens.audio, self._tokens.begin_audio
        while 0 < p < len(ids) and ids[p] == audio and ids[p - 1] in (audio, begin):
            p -= 1
        return p

    def keep(self, session_id: str | None, ids: list[int], cache: Any) -> None:
        if not (self.enabled and session_id):
            return
        n = seq_length(cache)
        ids = ids[:n]
        if n > self.max_tokens:  # keep the (reusable) beginning only
            crop(cache, self.max_tokens)
            ids = ids[: self.max_tokens]
        with self._lock:
            if session_id in self._released:
                self._caches.pop(session_id, None)
                return
            self._caches[session_id] = _SessionCache(ids, cache)
            self._caches.move_to_end(session_id)
            while len(self._caches) > self.max_sessions:
                evicted, _ = self._caches.popitem(last=False)
                logger.debug(f"Voxtral engine: evicted the KV cache of session {evicted}")

    def _new(self, needed: int) -> Any:
        from transformers import DynamicCache, StaticCache

        if self.static and needed <= self.max_tokens:
            return StaticCache(config=self._model_config, max_cache_len=self.max_tokens)
        return DynamicCache(config=self._model_config)


def is_static(cache: Any) -> bool:
    from transformers import StaticCache

    return isinstance(cache, StaticCache)


def seq_length(cache: Any) -> int:
    return int(cache.get_seq_length())


def crop(cache: Any, length: int) -> None:
    """Keep the first ``length`` positions of a cache (a StaticCache is rewound in place).

    Inside ``torch.inference_mode()``: the cache's tensors were made by ``generate()`` in inference
    mode, and an in-place update of an inference tensor outside it raises.
    """
    n = seq_length(cache)
    if length >= n:
        return
    with torch.inference_mode():
        if is_static(cache):
            for layer in cache.layers:  # stale slots past ``length`` are overwritten before use
                layer.cumulative_length.fill_(length)
        else:
            cache.crop(-(n - length))  # transformers 5.23: a negative count drops that many


def _storage_bytes(cache: Any) -> int:
    """Bytes of the tensors behind a cache's layers (a cropped view still holds its storage)."""
    seen: set[int] = set()
    total = 0
    for layer in getattr(cache, "layers", []):
        for tensor in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if isinstance(tensor, torch.Tensor) and tensor.numel():
                storage = tensor.untyped_storage()
                if storage.data_ptr() not in seen:
                    seen.add(storage.data_ptr())
                    total += storage.nbytes()
    return total
