"""A test-only vLLM logits processor: visible text from a random-weight Voxtral, scripted replies.

Loaded *inside the vLLM server* (``--logits-processors
voxtral_pipeline.testing.vllm_logits:ScriptedVoxtralLogits``, the repo root on its PYTHONPATH), so
it imports nothing but the standard library, torch and vLLM: the server runs in its own venv
(``.venv-vllm``) without pipecat or our transformers.

vLLM ignores ``generation_config.suppress_tokens``, so a random model samples control tokens and
broken bytes; this processor allows only EOS and the tokens of :data:`VISIBLE` (read from the model
directory's ``tekken.json``, never hard-coded ids). A JSON script file (``$VOXTRAL_VLLM_SCRIPT``,
re-read for every new request, so a test can change it while the server runs) adds:

* ``min_tokens``: EOS is forbidden before this many tokens (an answer long enough to interrupt);
* ``reply``: the answer's exact text, then EOS;
* ``tool_call``: ``{"name": ..., "arguments": {...}}``: when the prompt offers tools
  (``[AVAILABLE_TOOLS]``) and no tool result follows the last ``[INST]``, the answer is that
  call in Voxtral's pre-v11 form (``[TOOL_CALLS][{"name": ..., "arguments": ...}]``, then EOS),
  which vLLM's ``mistral`` tool parser streams as ``tool_calls`` deltas;
* ``step_delay_ms``: sleep this long per decoding step (a slow answer, to kill the server mid-way).
"""

from __future__ import annotations

import base64
import json
import os
import time
from pathlib import Path
from typing import Any

import torch
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor

SCRIPT_ENV = "VOXTRAL_VLLM_SCRIPT"
#: What a dummy may say: lower-case letters, space, comma, period.
VISIBLE = "abcdefghijklmnopqrstuvwxyz ,."


class _Tekken:
    """Ids read from ``tekken.json``: specials by name, and one id per single byte."""

    def __init__(self, path: Path):
        data = json.loads(path.read_text(encoding="utf-8"))
        specials = {t["token_str"]: int(t["rank"]) for t in data["special_tokens"]}
        self.num_special = int(data["config"]["default_num_special_tokens"])
        self.vocab_size = int(data["config"]["default_vocab_size"])
        self.special = specials
        self.byte_ids: dict[int, int] = {}
        for entry in data["vocab"][: int(data["config"]["num_vocab_tokens"])]:
            raw = base64.b64decode(entry["token_bytes"])
            if len(raw) == 1:
                self.byte_ids.setdefault(raw[0], self.num_special + int(entry["rank"]))
        self.eos = specials["</s>"]

    def text_ids(self, text: str) -> list[int]:
        return [self.byte_ids[b] for b in text.encode("utf-8")]


class _Request:
    """One request's plan: forced ids (then free, visible-only sampling) and an EOS floor."""

    def __init__(self, output_ids: list[int], forced: list[int], min_tokens: int, delay_s: float):
        self.output_ids = output_ids  # vLLM's running list of this request's generated ids
        self.forced = forced
        self.min_tokens = min_tokens
        self.delay_s = delay_s


class ScriptedVoxtralLogits(LogitsProcessor):
    """Visible text only, plus the script's forced reply or tool call (see the module docstring)."""

    def __init__(self, vllm_config: Any, device: torch.device, is_pin_memory: bool):
        model_dir = Path(vllm_config.model_config.model)
        self.tekken = _Tekken(model_dir / "tekken.json")
        vocab = int(vllm_config.model_config.get_vocab_size())
        allowed = [self.tekken.eos, *self.tekken.text_ids(VISIBLE)]
        mask = torch.full((vocab,), float("-inf"))
        mask[allowed] = 0.0
        self.visible_mask = mask.to(device)
        self.requests: dict[int, _Request] = {}

    def is_argmax_invariant(self) -> bool:
        return False

    def _script(self) -> dict[str, Any]:
        path = os.environ.get(SCRIPT_ENV)
        if not path or not Path(path).is_file():
            return {}
        try:
            return json.loads(Path(path).read_text(encoding="utf-8") or "{}")
        except (OSError, ValueError):
            return {}

    def _plan(self, prompt_ids: list[int] | None, output_ids: list[int]) -> _Request:
        script = self._script()
        t = self.tekken
        forced: list[int] = []
        prompt = prompt_ids or []
        call = script.get("tool_call")
        if call and t.special["[AVAILABLE_TOOLS]"] in prompt:
            last_inst = max((i for i, tok in enumerate(prompt) if tok == t.special["[INST]"]), default=-1)
            last_result = max(
                (i for i, tok in enumerate(prompt) if tok == t.special["[TOOL_RESULTS]"]), default=-1
            )
            if last_result < last_inst:
                body = json.dumps([{"name": call["name"], "arguments": call.get("arguments", {})}])
                forced = [t.special["[TOOL_CALLS]"], *t.text_ids(body), t.eos]
        if not forced and script.get("reply"):
            forced = [*t.text_ids(str(script["reply"])), t.eos]
        # One line per request beside the script (what a failing test's server did).
        self._log({"prompt_tokens": len(prompt), "forced_tokens": len(forced), "script": script})
        return _Request(
            output_ids, forced, int(script.get("min_tokens", 0)), float(script.get("step_delay_ms", 0)) / 1000
        )

    def _log(self, entry: dict[str, Any]) -> None:
        path = os.environ.get(SCRIPT_ENV)
        if path:
            with open(Path(path).with_suffix(".log"), "a", encoding="utf-8") as f:
                f.write(json.dumps(entry) + "\n")

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if batch_update is None:
            return
        for index in batch_update.removed:
            self.requests.pop(index, None)
        for index, _params, prompt_ids, output_ids in batch_update.added:
            self.requests[index] = self._plan(prompt_ids, output_ids)
        for a, b, direction in batch_update.moved:
            ra, rb = self.requests.pop(a, None), self.requests.pop(b, None)
            if ra is not None:
                self.requests[b] = ra
            if rb is not None and direction.name == "SWAP":
                self.requests[a] = rb

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        logits += self.visible_mask[: logits.shape[-1]]
        delay = 0.0
        for index, request in self.requests.items():
            if index >= logits.shape[0]:
                continue
            step = len(request.output_ids)
            delay = max(delay, request.delay_s)
            if step < len(request.forced):
                logits[index] = float("-inf")
                logits[index, request.forced[step]] = 0.0
            elif step < request.min_tokens:
                logits[index, self.tekken.eos] = float("-inf")
        if delay:
            time.sleep(delay)
        return logits
