"""The fields of a turn's latency waterfall, shared by the metrics stage and its exporters."""

#: Marks, in milliseconds from the real end of user speech, in waterfall order.
LATENCY_FIELDS = (
    "vad_stop_ms",
    "end_of_turn_ms",
    "inference_start_ms",
    "ttft_ms",
    "first_chunk_ms",
    "first_audio_ms",
    "voice_to_voice_ms",
)
#: Time spent by each stage on the way to the first bot audio (milliseconds).
STAGE_FIELDS = (
    "vad_wait_ms",
    "turn_detect_ms",
    "voxtral_ttft_ms",
    "first_chunk_wait_ms",
    "kokoro_ttfb_ms",
    "overhead_ms",
)
SUMMARY_FIELDS = LATENCY_FIELDS + STAGE_FIELDS
PERCENTILES = (50, 90, 95)
