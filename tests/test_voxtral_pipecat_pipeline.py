"""The Voxtral stage in pipelines a pipecat user writes: the canonical one, and pipecat flows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pipecat.audio.vad.silero import SileroVADAnalyzer
from pipecat.audio.vad.vad_analyzer import VADParams
from pipecat.flows import FlowArgs, FlowManager, FlowsFunctionSchema, NodeConfig
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import (
    LLMContextAggregatorPair,
    LLMUserAggregatorParams,
)
from pipecat.services.tts_service import TextAggregationMode
from pipecat.workers.runner import WorkerRunner

from tests.kokoro_fixtures import kokoro_tiny  # noqa: F401, F811  (the kokoro_tiny fixture)
from tests.voxtral_fixtures import (  # noqa: F401  (tiny_bundle_fixture: the tiny_bundle fixture)
    GenerateSpy,
    StageHarness,
    count,
    tiny_bundle_fixture,
    wait_until,
)
from voxtral_pipeline.config import PipelineConfig, VoxtralConfig
from voxtral_pipeline.engine import VoxtralEngine
from voxtral_pipeline.models.tekken import AUDIO_TOKEN_ID
from voxtral_pipeline.pipeline import build_transport
from voxtral_pipeline.processors.chunker import WordChunker
from voxtral_pipeline.processors.voxtral import VoxtralLLMService
from voxtral_pipeline.session import tts_role
from voxtral_pipeline.testing.voxtral import ForcedGeneration, tiny_tool_call

THREE_QUESTIONS = Path(__file__).resolve().parent.parent / "examples" / "audio" / "three_questions.wav"


async def test_the_canonical_pipecat_pipeline_holds_a_spoken_conversation(
    tiny_bundle,
    kokoro_tiny,  # noqa: F811
    tmp_path,
    monkeypatch,
):
    """input -> user aggregator -> voxtral -> chunker -> tts -> output -> assistant aggregator."""
    spy = GenerateSpy(tiny_bundle.model, monkeypatch)
    config = PipelineConfig.model_validate(
        {
            "transport": {
                "kind": "file",
                "file": {
                    "input": str(THREE_QUESTIONS),
                    "output": str(tmp_path / "out.wav"),
                    "idle_secs": 1.0,
                },
            },
            "voxtral": {
                "model": "dummy:tiny",
                "max_new_tokens": 8,
                "min_utterance_ms": 300,
                "warmup": False,
                "transcribe_history": True,
            },
            "kokoro": {"model": "dummy:tiny"},
        }
    )
    transport = build_transport(config)
    context = LLMContext()
    pair = LLMContextAggregatorPair(
        context,
        user_params=LLMUserAggregatorParams(vad_analyzer=SileroVADAnalyzer(params=VADParams(stop_secs=0.4))),
    )
    voxtral = VoxtralLLMService(
        config.voxtral, bundle=tiny_bundle, context=context
    )  # turns from the aggregator
    tts = tts_role(config).build(config, kokoro_tiny, TextAggregationMode.TOKEN)
    pipeline = Pipeline(
        [
            transport.input(),
            pair.user(),
            voxtral,
            WordChunker(config.chunker),
            tts,
            transport.output(),
            pair.assistant(),
        ]
    )
    worker = PipelineWorker(
        pipeline,
        params=PipelineParams(audio_in_sample_rate=16000, audio_out_sample_rate=24000),
        enable_rtvi=False,
        idle_timeout_secs=None,
    )
    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    await runner.run()
    spy_calls = list(spy.calls)
    spoken = [s for s in voxtral.turn_stats if s.trigger == "audio" and not s.dropped]
    assert len(spoken) >= 2, [(s.audio_secs, s.dropped) for s in voxtral.turn_stats]
    # Exactly one generate() per spoken turn; every prompt after the first reuses the KV cache.
    answers = [c for c in spy_calls if AUDIO_TOKEN_ID in c["input_ids"] and len(c["input_ids"]) > 300]
    assert len(answers) >= len(spoken) and all(s.generate_calls == 1 for s in spoken)
    assert all(s.cached_tokens > 0 for s in spoken[1:])
    # The context is pipecat's: the user turns as audio (or their transcripts), the answers as the
    # assistant aggregator recorded what was spoken.
    roles = [m["role"] for m in context.get_messages()]
    assert roles[0] == "user" and roles.count("assistant") >= len(spoken) - 1
    assert not voxtral.records_answers
    recording = transport.recording()  # left the user, right the bot
    assert np.abs(recording[:, 1]).max() > 0.01  # the bot spoke


async def test_pipecat_flows_drive_the_stage_and_a_function_moves_to_the_second_node(
    tiny_bundle, monkeypatch
):
    engine = VoxtralEngine.for_bundle(tiny_bundle)
    sent = []
    submit = engine.submit
    monkeypatch.setattr(
        engine, "submit", lambda r: (sent.append(r) if r.kind == "answer" else None) or submit(r)
    )
    forced = [tiny_tool_call(("choose_pizza", {"size": "large"}))]
    ForcedGeneration(tiny_bundle.model, monkeypatch, lambda prompt: forced.pop(0) if forced else None)
    chosen: list[dict] = []

    async def choose_pizza(args: FlowArgs, flow_manager: FlowManager) -> tuple[dict, NodeConfig]:
        chosen.append(dict(args))
        return {"size": args["size"]}, confirm_node()

    async def confirm(args: FlowArgs, flow_manager: FlowManager) -> tuple[dict, None]:
        return {"ok": True}, None

    def confirm_node() -> NodeConfig:
        return {
            "name": "confirm",
            "task_messages": [{"role": "developer", "content": "Confirm the order."}],
            "functions": [
                FlowsFunctionSchema(
                    "confirm_order", "Confirm the order.", properties={}, required=[], handler=confirm
                )
            ],
        }

    start: NodeConfig = {
        "name": "order",
        "role_message": "You take pizza orders.",
        "task_messages": [{"role": "developer", "content": "Ask which size."}],
        "functions": [
            FlowsFunctionSchema(
                "choose_pizza",
                "Record the size.",
                properties={"size": {"type": "string"}},
                required=["size"],
                handler=choose_pizza,
            )
        ],
    }
    config = VoxtralConfig(model="dummy:tiny", max_new_tokens=64, warmup=False, transcribe_history=False)
    context = LLMContext()
    pair = LLMContextAggregatorPair(context)
    voxtral = VoxtralLLMService(config, engine=engine, context=context, turns="utterance")
    harness = StageHarness(Pipeline([pair.user(), voxtral, pair.assistant()]))
    flow = FlowManager(worker=harness.worker, llm=voxtral, context_aggregator=pair)
    async with harness:
        await flow.initialize(start)
        await wait_until(lambda: flow.current_node == "confirm", "the flow to move to its second node")
        # The assistant aggregator takes the answers in; the second is the second node's.
        await wait_until(
            lambda: len(voxtral.turn_stats) >= 2 and voxtral.turn_stats[1].completion_tokens > 0,
            "the answer in the second node",
        )
    assert chosen == [{"size": "large"}]
    first, second = sent[0], sent[-1]
    assert [t["function"]["name"] for t in first.tools] == ["choose_pizza"]
    assert [t["function"]["name"] for t in second.tools] == ["confirm_order"]
    rendered = str(second.conversation)
    assert "You take pizza orders." in rendered and "Confirm the order." in rendered
