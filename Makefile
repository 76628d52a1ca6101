# `make run` and `make test` each do the whole set-up on a fresh machine into .venv/, then run.
VENV    ?= .venv
PYTHON  ?= python3
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
ARGS    ?=
# The default bot: the bundled three-question conversation through the file transport.
RUN_ARGS ?= --input examples/audio/three_questions.wav --output out/reply.wav --report out/report.json
TORCH_CPU_VERSION ?= 2.13.0

.PHONY: setup run test lint clean system-deps

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
	$(PY) -m pip install --quiet -e ".[webrtc,websocket,dev]"
	touch $(STAMP)

setup: $(STAMP)

# Debian packages the tests use: espeak-ng speaks the test conversations.
system-deps:
	@if ! command -v espeak-ng >/dev/null 2>&1; then \
		if [ "$$(id -u)" = "0" ]; then apt-get update -qq && apt-get install -y -qq espeak-ng >/dev/null; \
		elif command -v sudo >/dev/null 2>&1; then sudo apt-get update -qq && sudo apt-get install -y -qq espeak-ng >/dev/null; \
		else echo "espeak-ng is missing and cannot be installed: tests that need speech will be skipped"; fi; \
	fi

run: setup
	$(VENV)/bin/voxtral-pipeline run $(RUN_ARGS) $(ARGS)

test: setup system-deps
	$(PY) -m pytest -q $(ARGS)

lint: setup
	$(VENV)/bin/ruff check voxtral_pipeline tests benchmarks

clean:
	rm -rf $(VENV) out .pytest_cache
