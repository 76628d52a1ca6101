#!/usr/bin/env bash
# The wheels benchmarks/gpu_suite.py needs on a bare CUDA machine whose image already has torch,
# numpy, aiohttp, onnxruntime, tiktoken, huggingface-hub, ... (Python 3.12, x86-64), into .whl/
# (about 55 MB; carry it, see docs/deployment.md "The GPU suite"). Kokoro's English G2P (spaCy and
# its model) does not fit beside them: without it the suite records the Kokoro and voice-to-voice
# sections as skipped, with the reason.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${1:-.whl}
mkdir -p "$OUT"
platforms=(manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64
           manylinux2014_x86_64 manylinux_2_5_x86_64 manylinux1_x86_64)
args=(--no-deps --only-binary=:all: --python-version 3.12 --implementation cp -d "$OUT")
for p in "${platforms[@]}"; do args+=(--platform "$p"); done
# ours, and what they need that the image lacks (pip show on the image lists what it has)
pkgs=(transformers==5.24.0 pipecat-ai==1.14.0 mistral-common==1.13.1 loguru pydantic pydantic-core
      annotated-types typing-inspection pydantic-extra-types pycountry soundfile soxr docstring-parser
      loudness num2words resampy sentencex wait-for2 websockets python-dotenv openai distro jiter sniffio
      jsonschema jsonschema-specifications referencing rpds-py kokoro==0.9.4 misaki==0.9.4 addict)
for pkg in "${pkgs[@]}"; do "$PY" -m pip download -q "${args[@]}" "$pkg"; done
"$PY" -m pip wheel -q --no-deps -w "$OUT" docopt  # num2words needs it; PyPI has only its sdist
du -sh "$OUT"
