"""voxtral-pipeline: speech-to-speech voice agents on self-hosted models, built on pipecat."""

__version__ = "0.1.0"
