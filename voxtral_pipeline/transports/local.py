"""Local audio transport: this machine's microphone and speaker through PyAudio.

Devices are chosen by index or by a piece of their name (``--input-device``, ``--output-device``);
``voxtral-pipeline devices`` lists them. A machine with no audio device (a server, a container)
gets one clear :class:`LocalAudioError` before anything starts. Use headphones: the bot hears its
own voice through the speaker otherwise.

Needs the ``local`` extra (PyAudio; on Debian/Ubuntu ``apt-get install portaudio19-dev`` first).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any

from voxtral_pipeline.config import PipelineConfig
from voxtral_pipeline.transports import audio_params


class LocalAudioError(Exception):
    """Local audio cannot be used (no PyAudio, no device, unknown device); meant for the user."""


@dataclass
class AudioDevice:
    index: int
    name: str
    max_input_channels: int
    max_output_channels: int
    default_sample_rate: float

    def __str__(self) -> str:
        kinds = "/".join(
            k for k, n in (("in", self.max_input_channels), ("out", self.max_output_channels)) if n
        )
        return f"{self.index}: {self.name} ({kinds}, {self.default_sample_rate:.0f} Hz)"


def _import_pyaudio():
    try:
        import pyaudio
    except Exception as e:
        raise LocalAudioError(
            "local audio needs PyAudio: apt-get install portaudio19-dev, then "
            f"pip install 'voxtral-pipeline[local]' ({e})"
        ) from None
    return pyaudio


@contextlib.contextmanager
def _quiet_stderr():
    """PortAudio/ALSA print pages of probing noise to fd 2 on machines without sound cards."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def list_devices() -> list[AudioDevice]:
    """Every audio device PortAudio sees (empty on a machine without any)."""
    pyaudio = _import_pyaudio()
    with _quiet_stderr():
        pa = pyaudio.PyAudio()
    try:
        out = []
        for i in range(pa.get_device_count()):
            info = pa.get_device_info_by_index(i)
            out.append(
                AudioDevice(
                    i,
                    str(info.get("name", f"device {i}")),
                    int(info.get("maxInputChannels", 0)),
                    int(info.get("maxOutputChannels", 0)),
                    float(info.get("defaultSampleRate", 0.0)),
                )
            )
        return out
    finally:
        pa.terminate()


def select_device(devices: list[AudioDevice], spec: str | None, direction: str) -> int | None:
    """Index of the device ``spec`` names (an index or a name substring); None = the default.

    Raises:
        LocalAudioError: no device for ``direction`` at all, or none matching ``spec``.
    """
    attr = "max_input_channels" if direction == "input" else "max_output_channels"
    usable = [d for d in devices if getattr(d, attr) > 0]
    what = "microphone (input)" if direction == "input" else "speaker (output)"
    if not usable:
        raise LocalAudioError(
            f"no audio {what} device found on this machine; use --transport webrtc to talk from a browser"
        )
    if spec is None or str(spec).strip() == "":
        return None
    spec = str(spec).strip()
    if spec.isdigit():
        index = int(spec)
        if any(d.index == index for d in usable):
            return index
    else:
        matches = [d for d in usable if spec.lower() in d.name.lower()]
        if len(matches) == 1:
            return matches[0].index
        if len(matches) > 1:
            names = "; ".join(str(d) for d in matches)
            raise LocalAudioError(f"{direction} device {spec!r} is ambiguous: {names}")
    names = "; ".join(str(d) for d in usable)
    raise LocalAudioError(f"no {direction} device {spec!r}; available: {names}")


def local_params(config: PipelineConfig, input_index: int | None, output_index: int | None) -> Any:
    from pipecat.transports.local.audio import LocalAudioTransportParams

    return LocalAudioTransportParams(
        **audio_params(config),
        input_device_index=input_index,
        output_device_index=output_index,
    )


def build_local_transport(config: PipelineConfig, devices: list[AudioDevice] | None = None):
    """A ``LocalAudioTransport`` on the configured devices.

    Raises:
        LocalAudioError: PyAudio missing, no device, or the named device not found.
    """
    _import_pyaudio()
    devices = list_devices() if devices is None else devices
    local = config.transport.local
    input_index = select_device(devices, local.input_device, "input")
    output_index = select_device(devices, local.output_device, "output")
    from pipecat.transports.local.audio import LocalAudioTransport

    with _quiet_stderr():
        return LocalAudioTransport(local_params(config, input_index, output_index))
