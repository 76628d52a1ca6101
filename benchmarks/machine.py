"""What a benchmark ran on: the one copy lives in the package (``voxtral-pipeline bench`` needs it)."""

from voxtral_pipeline.machine import cpu_model, machine_info

__all__ = ["cpu_model", "machine_info"]
