"""Declarative configuration for the whole pipeline.

One pydantic model per stage, all strict (unknown keys are errors), loaded from a TOML or YAML
file, then environment variables (``VOXTRAL_PIPELINE__SECTION__KEY=value``), then CLI overrides,
in that order. Errors name the field and the values it accepts.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ENV_PREFIX = "VOXTRAL_PIPELINE__"

DEFAULT_INSTRUCTIONS = (
    "You are a helpful voice assistant. Listen to the user and answer what they ask in one to three "
    "short spoken sentences. Do not use lists, markdown or emoji."
)


class ConfigError(Exception):
    """A configuration that cannot be used; the message is meant for the user as is."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class VADConfig(_Strict):
    """Silero VAD, as shipped in pipecat."""

    confidence: float = Field(0.7, ge=0.0, le=1.0, description="Minimum speech probability.")
    start_secs: float = Field(0.2, ge=0.0, le=2.0, description="Speech needed before a start is declared.")
    stop_secs: float = Field(0.2, ge=0.0, le=3.0, description="Silence needed before a stop is declared.")
    min_volume: float = Field(0.6, ge=0.0, le=1.0, description="Minimum smoothed volume counted as speech.")


class TurnConfig(_Strict):
    """Turn stage: VAD plus Smart Turn v3 decide when the user's utterance is complete."""

    vad: VADConfig = Field(default_factory=VADConfig)
    smart_turn: bool = Field(
        True, description="Use Smart Turn v3 to confirm the end of a turn; if false the VAD stop ends it."
    )
    max_silence_secs: float = Field(
        3.0, gt=0.0, le=30.0, description="Silence that ends a turn Smart Turn judged incomplete."
    )
    pre_roll_ms: int = Field(300, ge=0, le=2000, description="Audio kept from before the VAD start.")


class VoxtralConfig(_Strict):
    """The Voxtral stage: one inference per user turn, streamed token by token."""

    model: str = Field(
        "mistralai/Voxtral-Mini-3B-2507",
        description="Hub id, local directory, or dummy:tiny / dummy:full (random weights).",
    )
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N.")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto", description="auto = bfloat16 on GPU, float32 on CPU."
    )
    max_new_tokens: int = Field(256, ge=1, le=8192)
    temperature: float = Field(0.2, ge=0.0, le=2.0, description="0 = greedy decoding.")
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    instructions: str = Field(
        DEFAULT_INSTRUCTIONS,
        description="Persona and instructions, put in the first user turn (Voxtral takes no system prompt "
        "with audio).",
    )
    seed: int | None = Field(None, description="Seed for sampling and for dummy weights.")


class ChunkerConfig(_Strict):
    """Word chunker: first words to TTS at once, then phrases."""

    first_chunk_words: int = Field(1, ge=1, le=20, description="Words in the first speech chunk.")
    min_words: int = Field(4, ge=1, le=50, description="Later chunks end at a clause mark once this long.")
    max_words: int = Field(24, ge=1, le=200, description="A later chunk is cut at a word boundary past this.")


class KokoroConfig(_Strict):
    """Kokoro-82M text to speech."""

    model: str = Field(
        "hexgrad/Kokoro-82M",
        description="Hub id, local directory, or dummy:tiny / dummy:full (random weights).",
    )
    voice: str = Field("af_heart", description="Voice name, or a path to a voice .pt file.")
    speed: float = Field(1.0, gt=0.25, le=4.0)
    lang_code: Literal["a", "b"] = Field("a", description="a = American English, b = British English.")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N.")
    trim_db: float = Field(
        40.0, gt=0.0, le=90.0, description="Edge silence below peak minus this is trimmed."
    )


class MetricsConfig(_Strict):
    """Per-turn latency waterfall and the session's percentiles."""

    jsonl: Path | None = Field(None, description="Append one JSON line per turn to this file.")
    log_turns: bool = Field(True, description="Log one line per turn.")


class FileTransportConfig(_Strict):
    """Stream a WAV file in real time like a microphone; record both sides to a stereo WAV."""

    input: Path | None = Field(None, description="Input WAV (any rate, mono or stereo, int or float).")
    output: Path | None = Field(None, description="Stereo WAV: left the user, right the bot.")
    report: Path | None = Field(None, description="JSON report of every turn and the summary.")
    tail_secs: float = Field(1.0, ge=0.0, le=30.0, description="Silence streamed after the file ends.")
    idle_secs: float = Field(2.0, gt=0.0, le=60.0, description="Bot silence after which the session ends.")
    reply_timeout_secs: float = Field(
        120.0, gt=0.0, description="Longest wait for the bot to answer the last turn before ending."
    )


class TransportConfig(_Strict):
    """Which transport carries the audio; the stages never know which one it is."""

    kind: Literal["file"] = Field("file", description="Transport to use.")
    file: FileTransportConfig = Field(default_factory=FileTransportConfig)


class AudioConfig(_Strict):
    """Pipeline sample rates."""

    in_sample_rate: Literal[16000] = Field(16000, description="Voxtral and Silero hear 16 kHz.")
    out_sample_rate: int = Field(24000, ge=8000, le=48000, description="Rate of the bot audio sent out.")


class PipelineConfig(_Strict):
    """The whole pipeline."""

    transport: TransportConfig = Field(default_factory=TransportConfig)
    audio: AudioConfig = Field(default_factory=AudioConfig)
    turns: TurnConfig = Field(default_factory=TurnConfig)
    voxtral: VoxtralConfig = Field(default_factory=VoxtralConfig)
    chunker: ChunkerConfig = Field(default_factory=ChunkerConfig)
    kokoro: KokoroConfig = Field(default_factory=KokoroConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)


def _format_error(error: ValidationError) -> str:
    parts = []
    for e in error.errors():
        where = ".".join(str(p) for p in e["loc"]) or "config"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
            allowed = _allowed_keys(e["loc"][:-1])
            if allowed:
                msg += f" (allowed: {', '.join(allowed)})"
        elif "input" in e and not isinstance(e["input"], dict):
            msg += f" (got {e['input']!r})"
        parts.append(f"{where}: {msg}")
    return "invalid config: " + "; ".join(parts)


def _allowed_keys(loc: tuple) -> list[str]:
    model: type[BaseModel] = PipelineConfig
    for part in loc:
        field = model.model_fields.get(str(part))
        if (
            field is None
            or not isinstance(field.annotation, type)
            or not issubclass(field.annotation, BaseModel)
        ):
            return []
        model = field.annotation
    return sorted(model.model_fields)


def _read_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        elif path.suffix == ".json":
            data = json.loads(text)
        else:
            data = tomllib.loads(text)
    except Exception as e:  # the parsers' own messages say where the syntax broke
        raise ConfigError(f"cannot parse config file {path}: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a table of settings at its top level")
    return data


def _set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = data
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"invalid config: {dotted}: {key} is not a section")
        node = child
    node[keys[-1]] = value


def _env_overrides(environ: dict[str, str]) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for name, value in environ.items():
        if name.startswith(ENV_PREFIX):
            dotted = name[len(ENV_PREFIX) :].lower().replace("__", ".")
            _set_path(data, dotted, value)
    return data


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def load_config(
    path: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
) -> PipelineConfig:
    """Build the configuration from a file, the environment and dotted-key overrides.

    Args:
        path: TOML (default), YAML or JSON file, or None for the defaults.
        overrides: ``{"voxtral.model": "dummy:tiny", ...}``; these win over everything else.
        environ: Environment to read ``VOXTRAL_PIPELINE__*`` variables from (``os.environ`` by default).

    Raises:
        ConfigError: with a one-line message naming the bad field and what it accepts.
    """
    data: dict[str, Any] = _read_file(Path(path)) if path else {}
    data = _merge(data, _env_overrides(dict(os.environ if environ is None else environ)))
    cli: dict[str, Any] = {}
    for dotted, value in (overrides or {}).items():
        if value is not None:
            _set_path(cli, dotted, value)
    data = _merge(data, cli)
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_error(e)) from None


def _type_name(annotation: Any) -> str:
    text = getattr(annotation, "__name__", None) if isinstance(annotation, type) else None
    text = text or str(annotation).replace("typing.", "").replace("pathlib.", "")
    return text.replace("Literal", "one of ").replace("NoneType", "None").replace(" | ", " or ")


def config_reference() -> str:
    """Markdown reference of every config key, generated from the models so it cannot drift."""
    lines = [
        "# Configuration reference",
        "",
        "Generated from `voxtral_pipeline/config.py` (`python -m voxtral_pipeline.config > "
        "docs/configuration.md`); a test keeps it in sync.",
        "",
        "Layers, later ones winning: the config file (TOML, YAML or JSON), environment variables "
        f"`{ENV_PREFIX}SECTION__KEY=value`, then CLI flags and `--set section.key=value`.",
        "",
    ]

    def walk(model: type[BaseModel], prefix: str) -> None:
        rows, subs = [], []
        for name, field in model.model_fields.items():
            ann = field.annotation
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                subs.append((ann, f"{prefix}{name}."))
                continue
            default = field.get_default(call_default_factory=True)
            desc = (field.description or "").replace("|", "\\|")
            rows.append(f"| `{prefix}{name}` | {_type_name(ann)} | `{default!r}` | {desc} |")
        if rows:
            title = prefix.rstrip(".") or "(top level)"
            doc = (model.__doc__ or "").strip().splitlines()[0]
            lines.extend(
                [f"## `{title}`", "", doc, "", "| key | type | default | meaning |", "|---|---|---|---|"]
            )
            lines.extend(rows)
            lines.append("")
        for sub, sub_prefix in subs:
            walk(sub, sub_prefix)

    walk(PipelineConfig, "")
    return "\n".join(lines)


if __name__ == "__main__":
    print(config_reference())
