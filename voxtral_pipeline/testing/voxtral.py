"""Driving the real Voxtral model code to a chosen output: for tests and benchmarks on dummy weights.

A random model says nonsense; :class:`ForcedGeneration` constrains ``generate()`` to given token
sequences (a function call, say) so the real rendering, streaming, parsing and context code runs
on them, and the model then goes on freely.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any


def _wrapping(original: Callable, spy: Callable) -> Callable:
    @functools.wraps(original)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return spy(*args, **kwargs)

    return wrapper


class ForcedGeneration:
    """Constrains ``model.generate`` to given token sequences, so the real rendering, streaming,
    parsing and context code runs on a random model's output (a function call, say).

    ``plan(prompt_ids)`` returns the ids to force for that call (each generated token in turn,
    then the model's own choice), or None to leave the call alone. Install after a
    :class:`GenerateSpy` to have the spy record the forced calls too.
    """

    def __init__(self, model: Any, monkeypatch: Any, plan: Callable[[list[int]], list[int] | None]):
        self.plan = plan
        self.forced: list[list[int]] = []
        inner = model.generate

        def generate(*args: Any, **kwargs: Any) -> Any:
            from transformers.generation import LogitsProcessorList

            prompt = kwargs["input_ids"][0].tolist()
            ids = self.plan(prompt)
            if ids:
                self.forced.append(ids)
                kwargs["logits_processor"] = LogitsProcessorList([_ForceTokens(ids, len(prompt))])
            return inner(*args, **kwargs)

        monkeypatch.setattr(model, "generate", _wrapping(inner, generate))


class _ForceTokens:
    """A logits processor that makes the n-th generated token ``ids[n]`` (then lets the model be)."""

    def __init__(self, ids: list[int], prompt_len: int):
        self.ids = ids
        self.prompt_len = prompt_len

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        step = input_ids.shape[1] - self.prompt_len
        if 0 <= step < len(self.ids):
            scores = scores.clone()
            scores[:] = float("-inf")
            scores[:, self.ids[step]] = 0.0
        return scores


def tiny_ids(text: str) -> list[int]:
    """Token ids of ``text`` for the tiny tokenizer (one byte-level token per UTF-8 byte)."""
    from voxtral_pipeline.models.tekken import byte_token_id

    return [byte_token_id(b) for b in text.encode("utf-8")]


def tiny_tool_call(*calls: tuple[str, dict[str, Any]], raw: str | None = None) -> list[int]:
    """Ids of a function call as Voxtral writes it (pre-v11 tekken form), then EOS.

    ``raw`` replaces the JSON after ``[TOOL_CALLS]`` (malformed calls).
    """

    from voxtral_pipeline.models.tekken import EOS_TOKEN_ID, TOOL_CALLS_TOKEN_ID

    text = raw if raw is not None else json.dumps([{"name": n, "arguments": a} for n, a in calls])
    return [TOOL_CALLS_TOKEN_ID, *tiny_ids(text), EOS_TOKEN_ID]
