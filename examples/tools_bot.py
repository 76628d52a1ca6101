"""A voice agent with two tools: it looks up an order, and it ends the call when the user says goodbye.

    python examples/tools_bot.py --input my_question.wav --output out/tools_recording.wav

plays a WAV to the bot as if spoken (the file transport) and records both sides; ``--transport
local`` talks through this machine's microphone and speaker instead. The tools are declared the
pipecat way (``FunctionSchema`` / ``ToolsSchema``) and their handlers registered on the Voxtral stage
with ``register_function``, as on any pipecat LLM service; docs/tools.md explains the rest. Add
``--set language=fr`` for a French agent (French voice and G2P; docs/languages.md).

Offline, with the dummy models (random weights: they babble and never call a tool on their own):

    python examples/tools_bot.py --model dummy:tiny --tts-model dummy:tiny

tests/test_tools_bot.py runs this bot with the dummy models constrained to call both tools.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import config_from, model_args  # noqa: E402
from loguru import logger  # noqa: E402
from pipecat.adapters.llm.schemas.function_schema import FunctionSchema  # noqa: E402
from pipecat.adapters.llm.schemas.tools_schema import ToolsSchema  # noqa: E402
from pipecat.frames.frames import EndTaskFrame  # noqa: E402
from pipecat.processors.frame_processor import FrameDirection  # noqa: E402
from pipecat.services.llm_service import FunctionCallParams  # noqa: E402

from voxtral_pipeline.config import PipelineConfig  # noqa: E402
from voxtral_pipeline.pipeline import VoicePipeline, build_pipeline, build_transport  # noqa: E402
from voxtral_pipeline.processors.voxtral import VoxtralLLMService  # noqa: E402

HERE = Path(__file__).resolve().parent

#: A stand-in for your order database.
ORDERS = {
    "A123": {"status": "shipped", "carrier": "DHL", "arrives": "tomorrow"},
    "B456": {"status": "being packed", "arrives": "in three days"},
}
#: How long the pretend database takes: long enough for the "One moment." filler to be heard.
LOOKUP_SECS = 1.0

TOOLS = ToolsSchema(
    standard_tools=[
        FunctionSchema(
            name="get_order_status",
            description="Look up the status and delivery date of a customer's order.",
            properties={"order_id": {"type": "string", "description": "The order number, e.g. A123."}},
            required=["order_id"],
        ),
        FunctionSchema(
            name="end_call",
            description="Hang up. Call it when the user says goodbye or has nothing more to ask.",
            properties={},
            required=[],
        ),
    ]
)

INSTRUCTIONS = (
    " You are the voice assistant of an online shop. Use get_order_status to answer questions about "
    "an order, and end_call once the user says goodbye; say a short goodbye after calling it."
)


async def get_order_status(params: FunctionCallParams) -> None:
    """Answers from the pretend database; an unknown order is an answer too, not an error."""
    await asyncio.sleep(LOOKUP_SECS)
    order_id = str(params.arguments.get("order_id", "")).strip().upper()
    order = ORDERS.get(order_id)
    await params.result_callback(
        {"order_id": order_id, **order} if order else {"error": f"no order {order_id}"}
    )


async def end_call(params: FunctionCallParams) -> None:
    """Ends the session gracefully: the goodbye the model says next is still spoken first.

    ``EndTaskFrame`` goes upstream and the worker sends an ``EndFrame`` down the pipeline; the
    Voxtral stage lets the answer in progress (the goodbye) finish before passing it on, and the
    TTS and the transport play out what is queued before they stop.
    """
    await params.result_callback({"status": "the call will end after your goodbye"})
    logger.info("end_call: ending the session after the goodbye")
    await params.llm.push_frame(EndTaskFrame(reason="the user said goodbye"), FrameDirection.UPSTREAM)


def build_tools_bot(config: PipelineConfig, transport=None) -> VoicePipeline:
    """The standard pipeline with a Voxtral stage that offers and runs the two tools."""
    voxtral = VoxtralLLMService(config.voxtral, tools=TOOLS)
    voxtral.register_function("get_order_status", get_order_status)
    voxtral.register_function("end_call", end_call)
    return build_pipeline(config, transport or build_transport(config), voxtral=voxtral)


def parse_config(argv: list[str] | None = None) -> PipelineConfig:
    parser = model_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--transport", "-t", choices=["file", "local"], default="file")
    parser.add_argument("--input", "-i", default=str(HERE / "audio" / "three_questions.wav"))
    parser.add_argument("--output", "-o", default="out/tools_recording.wav")
    args = parser.parse_args(argv)
    overrides = {"transport.kind": args.transport}
    if args.transport == "file":
        overrides.update({"transport.file.input": args.input, "transport.file.output": args.output})
    config = config_from(args, **overrides)
    config.voxtral.instructions += INSTRUCTIONS
    return config


async def run_bot(config: PipelineConfig) -> tuple[VoicePipeline, dict]:
    """Run one session to its end; with the file transport, write the recording."""
    voice = build_tools_bot(config)
    report = await voice.run()
    output = config.transport.file.output
    if config.transport.kind == "file" and output is not None and voice.fatal_error is None:
        print(f"wrote {voice.transport.write_recording(output)}")
    return voice, report


async def main(argv: list[str] | None = None) -> None:
    voice, _ = await run_bot(parse_config(argv))
    for stats in voice.voxtral.turn_stats:
        calls = ", ".join(f"{c.name}({c.arguments}) -> {c.result}" for c in stats.tool_calls)
        print(f"turn {stats.turn}: {calls or 'no tool call'}; said {stats.text!r}")
    if voice.fatal_error is not None:
        raise SystemExit(f"error: {voice.fatal_error}")


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
