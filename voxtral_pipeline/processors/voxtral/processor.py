"""Voxtral stage: a pipecat ``LLMService`` that hears each user turn and streams its answer.

A spoken turn becomes exactly one request to the model on the session's conversation, pipecat's
``LLMContext``: earlier user turns as audio (within the audio budget) or as text, earlier answers
as the text the bot actually said, the new turn as audio. The turn comes either from the project's
turn stage (a ``UserUtteranceFrame``) or, in pipecat's canonical pipeline
(``transport.input() -> user_aggregator -> voxtral -> tts -> transport.output() ->
assistant_aggregator``), as the ``InputAudioRawFrame``\ s between the user aggregator's
``UserStartedSpeakingFrame`` and ``UserStoppedSpeakingFrame`` (as pipecat's
``NvidiaOmniLLMService`` does). ``LLMContextFrame``, ``LLMRunFrame`` and
``LLMMessagesAppendFrame`` start completions too (typed input, tool results, a greeting). The
answer goes downstream as ``LLMFullResponseStartFrame``, one ``LLMTextFrame`` per token as soon as
it decodes, then ``LLMFullResponseEndFrame``, so the chunker and TTS can start on the first word.

The model runs behind a :class:`~voxtral_pipeline.processors.voxtral.backend.VoxtralBackend`: the
shared in-process :class:`~voxtral_pipeline.engine.VoxtralEngine` or a vLLM server. This stage
holds only the session: its conversation (:mod:`.context`), its answer in flight
(:class:`~.answer.Answer`), its function-call rounds (:class:`~.tool_round.ToolRound`), its
speculative start (:mod:`.speculation`) and its idle-time work (:class:`~.idle.IdleWork`).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any, Literal

import torch
from loguru import logger
from pipecat.adapters.llm.schemas.function_schema import FunctionSchema
from pipecat.adapters.llm.schemas.tools_schema import ToolsSchema
from pipecat.frames.frames import (
    CancelFrame,
    EndFrame,
    Frame,
    FunctionCallCancelFrame,
    FunctionCallResultFrame,
    InputAudioRawFrame,
    InterruptionFrame,
    LLMContextFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMMessagesAppendFrame,
    LLMMessagesUpdateFrame,
    LLMRunFrame,
    LLMServiceMetadataFrame,
    LLMSetToolsFrame,
    LLMTextFrame,
    LLMUpdateSettingsFrame,
    TTSSpeakFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from pipecat.metrics.metrics import LLMTokenUsage
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.frame_processor import FrameDirection, FrameProcessorSetup
from pipecat.services.llm_service import LLMService
from pipecat.utils.errors import ErrorCategory

from voxtral_pipeline.config import VoxtralConfig
from voxtral_pipeline.engine import EngineResult, VoxtralEngine
from voxtral_pipeline.frames import (
    BotSpokenTextFrame,
    SpeculationCancelFrame,
    SpeculativeUtteranceFrame,
    UserTurnIgnoredFrame,
    UserUtteranceFrame,
)
from voxtral_pipeline.languages import language
from voxtral_pipeline.models.voxtral import (
    VoxtralBundle,
)
from voxtral_pipeline.processors.voxtral.adapter import VoxtralLLMAdapter
from voxtral_pipeline.processors.voxtral.answer import Answer
from voxtral_pipeline.processors.voxtral.backend import AnswerJob, VoxtralBackend, make_backend
from voxtral_pipeline.processors.voxtral.completions import CompletionTracker
from voxtral_pipeline.processors.voxtral.context import (
    ContextTurn,
    VoxtralContext,
    check_utterance,
    utterance_samples,
)
from voxtral_pipeline.processors.voxtral.idle import IdleWork
from voxtral_pipeline.processors.voxtral.settings import VoxtralLLMSettings
from voxtral_pipeline.processors.voxtral.speculation import Speculation, SpeculativeStarts
from voxtral_pipeline.processors.voxtral.speech import SpeechBuffer
from voxtral_pipeline.processors.voxtral.stats import AheadWork, TurnStats
from voxtral_pipeline.processors.voxtral.tool_round import ToolRound
from voxtral_pipeline.processors.voxtral.tools import (
    ToolCall,
    ToolCallStream,
    check_function_name,
    cut_off_message,
    nothing_said_message,
)

#: Where spoken turns come from: pipecat's user aggregator (its ``UserStarted/StoppedSpeakingFrame``
#: around the ``InputAudioRawFrame``\ s) or the project's turn stage (``UserUtteranceFrame``).
TurnSource = Literal["pipecat", "utterance"]


class VoxtralLLMService(LLMService):
    """Speech-in, text-out pipecat ``LLMService`` on Voxtral (shared in-process engine, or vLLM).

    Answers spoken turns (see the module docstring for where they come from) and the completions
    pipecat asks for (``LLMContextFrame``, ``LLMRunFrame``, ``LLMMessagesAppendFrame``); applies
    ``LLMUpdateSettingsFrame`` (temperature, max tokens, system instruction) and
    ``LLMSetToolsFrame``; forwards every other frame. Idle-time transcripts of earlier turns go
    upstream as ``TranscriptionFrame``\ s. Per-turn numbers are kept in :attr:`turn_stats` and the
    conversation in :attr:`context` (its ``LLMContext`` is :attr:`llm_context`). A turn whose
    generation fails sends a non-fatal ``ErrorFrame`` upstream and :attr:`error_reply` to be spoken,
    kept out of the conversation, so the user hears why nothing (or only part of an answer) came
    and asks again: by default (None) the session language's apology; an empty string says nothing.
    A function call cut off by the token limit is not run: a warning is logged and
    :attr:`error_reply` is spoken too, as for an answer the limit ended before it said anything
    or made a call (see docs/tools.md).
    """

    Settings = VoxtralLLMSettings
    _settings: VoxtralLLMSettings
    adapter_class = VoxtralLLMAdapter
    error_reply: str | None = None

    def __init__(
        self,
        config: VoxtralConfig,
        *,
        bundle: VoxtralBundle | None = None,
        engine: VoxtralEngine | None = None,
        warmup: bool | None = None,
        session_id: str | None = None,
        min_new_tokens: int = 0,
        tools: ToolsSchema | list[FunctionSchema] | None = None,
        context: LLMContext | None = None,
        settings: VoxtralLLMSettings | None = None,
        turns: TurnSource = "pipecat",
        record_answers: bool | None = None,
        **kwargs,
    ):
        """Initialize the stage.

        Args:
            config: Model spec, backend, device, sampling, memory and instructions.
            bundle: An already loaded model; its shared engine is used. Loaded in ``setup()``
                from ``config`` when neither this nor ``engine`` is given (one engine per model
                spec and device in the process).
            engine: A shared engine to use.
            warmup: Override ``config.warmup`` (one short generation per engine at start-up).
            session_id: Id of this session (KV cache key, vLLM routing); a random one by default.
            min_new_tokens: Do not stop at EOS before this many tokens (benchmarks: fixed lengths;
                vLLM's ``min_tokens``).
            tools: Functions offered to the model (pipecat schemas); register their handlers with
                :meth:`register_function` (or give them in the schemas). See docs/tools.md.
            context: The conversation, shared with an ``LLMContextAggregatorPair``; a new one
                otherwise (an ``LLMContextFrame`` replaces it).
            settings: Runtime-updatable settings over those of ``config``.
            turns: ``"pipecat"``: spoken turns are the audio between the user aggregator's
                turn frames; ``"utterance"``: the turn stage's ``UserUtteranceFrame``\ s only.
            record_answers: Write the answers into the context. By default only while no
                assistant aggregator does (no ``context`` given and no ``LLMContextFrame`` seen).
            **kwargs: Passed to ``LLMService``.
        """
        merged = VoxtralLLMSettings.from_config(config)
        if settings is not None:
            merged.apply_update(settings)
        kwargs.setdefault("function_call_timeout_secs", config.tools.timeout_secs)
        super().__init__(settings=merged, **kwargs)
        self._config = config
        self.session_id = session_id or uuid.uuid4().hex
        self._backend = make_backend(
            config,
            self.session_id,
            bundle=bundle,
            engine=engine,
            warmup=config.warmup if warmup is None else warmup,
        )
        self._min_new_tokens = min_new_tokens
        self._context = VoxtralContext(
            lambda: self._settings.system_instruction or None,
            config.history_audio_turns,
            max_user_turns=config.max_history_turns,
            llm_context=context,
            max_audio_secs=config.max_utterance_secs,
        )
        self._record_answers = record_answers
        self._aggregated = context is not None  # an assistant aggregator records the answers
        self._turn_source: TurnSource = turns
        if tools is not None and not isinstance(tools, ToolsSchema):
            tools = ToolsSchema(standard_tools=list(tools))
        for schema in tools.standard_tools if tools is not None else []:
            check_function_name(schema.name)
        self._own_tools: ToolsSchema | None = tools
        self._tool_round: ToolRound | None = None
        self._turn_stats: list[TurnStats] = []
        self._ahead = AheadWork()  # prefill done for the next turn (idle refresh, discarded speculation)
        self._turn: Answer | None = None
        self._generate_calls = 0
        self._speculation = SpeculativeStarts(self)
        # The last answer in the context whose playback is not known to be complete: at an
        # interruption it is replaced by what was actually heard (BotSpokenTextFrame).
        self._unplayed: tuple[ContextTurn, int] | None = None
        self._idle = IdleWork(self)
        self._speech = SpeechBuffer()
        self._ready = False
        self._completions = CompletionTracker()
        self._reported_drops: set[str] = (
            set()
        )  # what the context held that Voxtral cannot take  # ids of the messages the last completion saw

    # ------------------------------------------------------------------------------------------
    # Properties

    @property
    def bundle(self) -> VoxtralBundle | None:
        """The loaded model (None before ``setup()`` when none was given, and with vLLM)."""
        return getattr(self._backend, "bundle", None)

    @property
    def engine(self) -> VoxtralEngine | None:
        """The shared in-process engine (None with vLLM)."""
        return getattr(self._backend, "engine", None)

    @property
    def completions(self) -> CompletionTracker:
        return self._completions

    @property
    def backend(self) -> VoxtralBackend:
        return self._backend

    @property
    def config(self) -> VoxtralConfig:
        return self._config

    @property
    def context(self) -> VoxtralContext:
        """The conversation: the ``LLMContext`` and the audio memory of the spoken turns."""
        return self._context

    @property
    def llm_context(self) -> LLMContext:
        return self._context.llm_context

    @property
    def turn_source(self) -> TurnSource:
        """Where spoken turns come from (see ``turns`` in ``__init__``); set before the pipeline starts."""
        return self._turn_source

    @turn_source.setter
    def turn_source(self, value: TurnSource) -> None:
        self._turn_source = value

    @property
    def records_answers(self) -> bool:
        """Whether this stage writes its answers into the context (no assistant aggregator does)."""
        return (not self._aggregated) if self._record_answers is None else self._record_answers

    def service_metadata_frame(self) -> LLMServiceMetadataFrame:
        """Realtime when hearing the user directly: the user aggregator then waits for no transcript."""
        return LLMServiceMetadataFrame(
            service_name=self.name, is_realtime_service=self._turn_source == "pipecat"
        )

    # ------------------------------------------------------------------------------------------
    # Tools: pipecat's register_function / direct functions / LLMSetToolsFrame; see .tool_round

    def _service_tools(self) -> ToolsSchema | None:
        return self._own_tools

    def offered_tools(self) -> list[dict[str, Any]] | None:
        """Functions offered to the model: the context's (``LLMSetToolsFrame``), then the stage's own."""
        adapter = self.get_llm_adapter()
        tools: dict[str, dict[str, Any]] = {}
        for schema in (self.llm_context.tools, self._own_tools):
            if isinstance(schema, ToolsSchema) and schema.standard_tools:
                for t in adapter.to_provider_tools_format(schema):
                    tools.setdefault(t["function"]["name"], dict(t))
        return list(tools.values()) or None

    async def push_frame(self, frame: Frame, direction: FrameDirection = FrameDirection.DOWNSTREAM):
        # A call's end, as pipecat broadcasts it, settles it in the round that waits for it.
        if (
            self._tool_round is not None
            and direction == FrameDirection.DOWNSTREAM
            and isinstance(frame, (FunctionCallResultFrame, FunctionCallCancelFrame))
        ):
            self._tool_round.settle(frame)
        await super().push_frame(frame, direction)

    @property
    def history(self) -> list[ContextTurn]:
        """The conversation so far: user turns (audio, transcript), the bot's turns as heard (turns.md)."""
        return list(self._context.turns)

    @property
    def turn_stats(self) -> list[TurnStats]:
        """One dict per user utterance: tokens, prefill, generate calls, timings (ms), flags."""
        return self._turn_stats

    @property
    def speculation_counts(self) -> dict[str, int]:
        """Speculative answers confirmed (released) and discarded (unheard) so far."""
        return {"confirmed": self._speculation.confirmed, "discarded": self._speculation.discarded}

    @property
    def generate_calls(self) -> int:
        """``generate()`` calls (or vLLM requests) for user turns (warm-up, transcripts not counted)."""
        return self._generate_calls

    def can_generate_metrics(self) -> bool:
        return True

    async def stop_all_metrics(self):
        """On interruption: an answer cut off before its first token has no TTFB to report."""
        await self.cancel_ttfb_metrics()
        await super().stop_all_metrics()

    # ------------------------------------------------------------------------------------------
    # Lifecycle

    async def setup(self, setup: FrameProcessorSetup):
        """Load the model (once per process and spec, off the event loop) or connect to vLLM; warm up.

        Raises:
            ModelUnavailableError: when the model cannot be loaded; the message is for the user.
        """
        await super().setup(setup)
        await self._backend.start()
        self._ready = True

    async def cleanup(self):
        await super().cleanup()
        await self._idle.cancel()
        if self._turn is not None:
            await self._stop_turn()
        await self._backend.close()

    async def run_inference(
        self,
        context: LLMContext,
        max_tokens: int | None = None,
        system_instruction: str | None = None,
        response_schema: dict[str, Any] | None = None,
    ) -> str | None:
        """A one-shot completion of ``context`` outside the conversation (flows' summaries, classifiers).

        Its audio is heard as audio; it uses no session's KV cache and counts as no user turn.
        """
        self._check_response_schema(response_schema)
        instructions = (
            system_instruction if system_instruction is not None else self._settings.system_instruction
        )
        request = self.get_llm_adapter().voxtral_request(context, instructions=instructions or None)
        if request.dropped:
            logger.warning(f"{self}: run_inference left out: {'; '.join(request.dropped)}")
        sampling = self._sampling()
        if max_tokens is not None:
            sampling["max_new_tokens"] = max_tokens
        text = await self._backend.complete(request.messages, **sampling)
        return text.strip() or None

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        # LLMService: settings updates, function calls cancelled at an interruption, tool
        # handlers advertised in a context frame registered.
        await super().process_frame(frame, direction)

        if isinstance(frame, UserUtteranceFrame):
            await self._start_turn(frame)
        elif isinstance(frame, SpeculativeUtteranceFrame):
            await self._speculation.start(frame)
        elif isinstance(frame, SpeculationCancelFrame):
            await self._speculation.discard("the user went on speaking")
        elif isinstance(frame, LLMContextFrame):
            await self._on_context_frame(frame)
        elif isinstance(frame, LLMRunFrame):
            await self._start_text_turn("run")
        elif isinstance(frame, (LLMMessagesAppendFrame, LLMMessagesUpdateFrame)):
            if isinstance(frame, LLMMessagesAppendFrame):
                self.llm_context.add_messages(frame.messages)
            else:
                self.llm_context.set_messages(frame.messages)
            if frame.run_llm:
                await self._start_text_turn("messages")
        elif isinstance(frame, LLMSetToolsFrame):
            self.llm_context.set_tools(frame.tools)
            self._sync_registered_tool_handlers(frame.tools)
        elif isinstance(frame, LLMUpdateSettingsFrame):
            pass  # applied (or passed on, when meant for another service) by LLMService
        elif isinstance(frame, BotSpokenTextFrame):
            self._on_spoken(frame)
            await self.push_frame(frame, direction)
        elif isinstance(frame, InterruptionFrame):
            await self._speculation.discard("interrupted")
            await self._stop_turn()
            self._speech.interrupted()
            await self.push_frame(frame, direction)
        elif isinstance(frame, EndFrame):
            # A graceful end lets the answer in progress finish (max_new_tokens bounds it).
            await self._speculation.discard("the session ended")
            await self._wait_turn()
            await self._idle.cancel()
            await self.push_frame(frame, direction)
        elif isinstance(frame, CancelFrame):
            await self._idle.cancel()
            await self._speculation.discard("the session was cancelled")
            await self._stop_turn()
            await self.push_frame(frame, direction)
        else:
            await self.push_frame(frame, direction)
            if self._turn_source == "pipecat":
                await self._on_aggregator_frame(frame)

    async def _on_aggregator_frame(self, frame: Frame) -> None:
        """Spoken turns in pipecat's pipeline: the audio between the user aggregator's turn frames."""
        if isinstance(frame, InputAudioRawFrame):
            self._speech.add(frame)
        elif isinstance(frame, UserStartedSpeakingFrame):
            self._speech.start()
        elif isinstance(frame, UserStoppedSpeakingFrame):
            utterance = self._speech.stop()
            if utterance is not None:
                await self._start_turn(utterance)

    async def _on_context_frame(self, frame: LLMContextFrame) -> None:
        """Adopt the aggregators' context; answer it when it holds something new to answer."""
        self._aggregated = True
        if frame.context is not self.llm_context:
            self._context.use(frame.context)
            self._completions.forget()
        self._completions.drop_echoes(self.llm_context)
        if self._completions.needs_answer(self.llm_context):
            await self._start_text_turn("context")

    # ------------------------------------------------------------------------------------------
    # Turns

    def _new_stats(self, speech_end_time: float, audio_secs: float, trigger: str) -> TurnStats:
        return TurnStats(
            turn=len(self._turn_stats),
            trigger=trigger,
            speech_end_time=speech_end_time,
            audio_secs=audio_secs,
        )

    def _take_ahead(self, stats: TurnStats) -> None:
        """The prefill done for this turn before it started goes on its bill."""
        stats.ahead_prefill_tokens, stats.ahead_prefill_ms = self._ahead.take()

    async def _start_turn(self, frame: UserUtteranceFrame, speculative: bool = False):
        if not speculative and await self._speculation.settle(frame):
            return  # the answer started at the VAD stop answers this turn: released
        await self._idle.cancel()
        if self._turn is not None:
            await self._stop_turn()
        stats = self._new_stats(frame.speech_end_time, frame.duration_secs, "audio")
        if not speculative:  # a speculative turn's stats are kept only if it is confirmed
            self._turn_stats.append(stats)
            self._take_ahead(stats)
        c = self._config
        samples, reason = check_utterance(
            utterance_samples(frame),
            min_secs=c.min_utterance_ms / 1000,
            silence_dbfs=c.silence_dbfs,
            max_secs=c.max_utterance_secs,
        )
        if samples is None:
            stats.dropped = reason
            logger.debug(f"{self}: turn {stats.turn} dropped without inference: {reason}")
            if not speculative:  # no answer is coming: whoever waits for one (a transport) stops
                await self.broadcast_frame(UserTurnIgnoredFrame, reason=reason)
            return
        if not self._ready:
            stats.error = "not ready"
            await self.push_error("Voxtral received a user turn before its model was loaded")
            return
        user = self._context.add_user(samples)
        self._context.release_old_audio(transcribing=c.transcribe_history)  # a long session stays flat
        turn = Answer(index=stats.turn, stats=stats)
        if speculative:
            turn.speculation = Speculation(user, calls_before=self._generate_calls)
            self._speculation.turn = turn
        else:
            self._turn = turn
            await self.start_ttfb_metrics(start_time=frame.speech_end_time)
        self._completions.seen(self.llm_context)
        turn.task = self.create_task(self._run_turn(turn), f"generate-turn-{turn.index}")

    async def _start_text_turn(self, trigger: str) -> None:
        """A completion pipecat asked for (context frame, ``LLMRunFrame``, appended messages)."""
        if self._speculation.turn is not None:
            await self._speculation.discard(f"a completion was requested ({trigger})")
        await self._idle.cancel()
        if self._turn is not None:
            await self._stop_turn()
        if not self._ready:
            await self.push_error("Voxtral was asked for a completion before its model was loaded")
            return
        stats = self._new_stats(time.time(), 0.0, trigger)
        self._turn_stats.append(stats)
        self._take_ahead(stats)
        turn = self._turn = Answer(index=stats.turn, stats=stats)
        self._completions.seen(self.llm_context)
        await self.start_ttfb_metrics()
        turn.task = self.create_task(self._run_turn(turn), f"generate-{trigger}-{turn.index}")

    async def _push_answer(self, turn: Answer, frame: Frame) -> None:
        """Push a frame of the answer, or hold it while the answer is speculative."""
        if turn.speculation is not None:
            turn.speculation.hold(frame)
        else:
            await self.push_frame(frame)

    def _on_spoken(self, frame: BotSpokenTextFrame) -> None:
        """Keep in the context only what the listener heard of the last answer."""
        unplayed, self._unplayed = self._unplayed, None
        if unplayed is None or not frame.interrupted:
            return
        context_turn, said_before = unplayed
        heard = frame.text[said_before:] if len(frame.text) > said_before else ""
        if heard != context_turn.text:
            logger.debug(f"{self}: answer cut off; the context keeps what was heard: {heard!r}")
            context_turn.text = heard

    async def _emit(self, turn: Answer, text: str) -> None:
        """Send one token's text downstream (never after the turn was stopped)."""
        if not text or turn.stopped:
            return
        if not turn.text_parts:
            await self.stop_ttfb_metrics()
            turn.stats.ttft_ms = (time.time() - turn.stats.speech_end_time) * 1000
        turn.text_parts.append(text)
        await self._push_answer(turn, LLMTextFrame(text))

    async def _run_turn(self, turn: Answer):
        """Stream one answer to the pipeline; pushes the response frames."""
        await self._push_answer(turn, LLMFullResponseStartFrame())
        await self.start_processing_metrics()
        try:
            result = await self._answer_with_tools(turn)
            self._record_result(turn, result)
            await self.start_llm_usage_metrics(
                LLMTokenUsage(
                    prompt_tokens=result.prompt_tokens,
                    completion_tokens=result.completion_tokens,
                    total_tokens=result.prompt_tokens + result.completion_tokens,
                    cache_read_input_tokens=result.cached_tokens or None,
                    input_audio_tokens=result.audio_tokens or None,
                )
            )
        except asyncio.CancelledError:
            turn.stats.interrupted = True
            # Cancelled from outside (the session is ending): the shared engine must stop too, not
            # decode the rest of an answer nobody hears while other sessions wait.
            turn.stop()
            raise
        except Exception as e:
            turn.stats.error = f"{type(e).__name__}: {e}"
            await self.cancel_ttfb_metrics()
            what = "ran out of memory" if isinstance(e, torch.OutOfMemoryError) else "failed"
            await self.push_error(
                f"Voxtral generation {what} on turn {turn.index}: {type(e).__name__}: {e}",
                exception=e,
                category=ErrorCategory.UNKNOWN,
            )
        finally:
            self._close_turn(turn)
        await self.stop_processing_metrics()
        await self._push_answer(turn, LLMFullResponseEndFrame())
        apology = self.error_reply
        if apology is None:
            apology = language(self._config.language).apology
        if turn.stats.error and apology and not turn.stopped and turn.speculation is None:
            # Its own TTS turn, after the (partial) answer; kept out of the model's context. Said
            # for a failure and for a call the token limit cut off alike: the user asked for
            # something and would otherwise wait in silence for it.
            await self.push_frame(TTSSpeakFrame(apology, append_to_context=False))
        self._start_idle_work()

    async def _answer_with_tools(self, turn: Answer) -> EngineResult:
        """Generate; while the model calls functions, run them, add call and result, and go on.

        Only the answer text is sent downstream: a call is held back from the first
        ``[TOOL_CALLS]`` on (see :class:`ToolCallStream`).
        """
        total: EngineResult | None = None
        rounds = self._config.tools.max_rounds
        for round_index in range(rounds + 1):
            stream = ToolCallStream()
            self._generate_calls += 1
            request = self._context.request(max_audios=self._backend.max_audios)
            new = [d for d in request.dropped if d not in self._reported_drops] if round_index == 0 else []
            if new:
                # What Voxtral cannot take is named once; the rest of the turn is answered.
                self._reported_drops.update(new)
                await self.push_error(f"Voxtral left out of the context: {'; '.join(new)}")
            seed = self._settings.seed if isinstance(self._settings.seed, int) else self._config.seed
            job = AnswerJob(
                session_id=self.session_id,
                messages=request.messages,
                tools=self.offered_tools(),
                seed=None if seed is None else seed + turn.index,
                min_new_tokens=self._min_new_tokens,
                cancel=turn.cancel,
                on_finished=turn.engine_finished,
                **self._sampling(),
            )

            async def feed(text: str, stream: ToolCallStream = stream) -> None:
                await self._emit(turn, stream.feed(text))

            said_before = len(turn.text)
            result = await self._backend.answer(job, feed, stream.add_calls)
            total = result if total is None else _merged(total, result)
            calls = stream.calls()
            if not calls:
                if result.finish_reason == "length" and not turn.text[said_before:].strip():
                    # Silent and cut: the model was starting a call (vLLM streams nothing before its
                    # name) or had nothing speakable yet. Told like a cut call, so no turn ends mute.
                    turn.stats.error = nothing_said_message(job.max_new_tokens)
                    logger.warning(f"{self}: turn {turn.index}: {turn.stats.error}")
                break
            if turn.speculation is not None:
                # Not confirmed yet: never run functions (or touch the context) for a turn the
                # user may not have finished. (Speculation is skipped when tools are offered; this
                # is a model calling on its own.)
                logger.debug(f"{self}: speculative turn {turn.index} made a function call; not run")
                break
            if result.finish_reason == "length":
                # The limit cut the call: its name or arguments may be partial, so nothing runs, and
                # the model is not told (it erred in nothing; the same limit would cut it again).
                turn.stats.error = cut_off_message(stream.names(), job.max_new_tokens)
                logger.warning(f"{self}: turn {turn.index}: {turn.stats.error}")
                break
            if round_index == rounds:
                logger.warning(f"{self}: turn {turn.index}: still calling functions after {rounds} rounds")
                turn.stats.tool_rounds_exhausted = True
                break
            if not await self._run_tools(turn, calls):
                break  # every handler asked for no further inference (run_llm=False)
        assert total is not None
        return total

    async def _run_tools(self, turn: Answer, calls: list[ToolCall]) -> bool:
        """Run a round of calls through pipecat; True to answer their results in this turn."""
        said = turn.text[turn.context_chars :]
        turn.context_chars = len(turn.text)
        t = self._config.tools

        async def say_filler() -> None:
            if turn.stopped:
                return
            text = t.filler_text or language(self._config.language).filler
            space = "" if not turn.text or turn.text[-1].isspace() else " "
            turn.stats.fillers += 1
            await self._emit(turn, f"{space}{text} ")

        self._tool_round = ToolRound(
            self,
            calls,
            said=said,
            record=self.records_answers,
            records=turn.stats.tool_calls,
            say=say_filler if t.filler else None,
            filler_after_s=t.filler_after_ms / 1000,
        )
        try:
            return await self._tool_round.run()
        finally:
            self._tool_round = None

    def _sampling(self) -> dict[str, Any]:
        """The sampling settings as they are now (``LLMUpdateSettingsFrame`` changes them)."""
        st, c = self._settings, self._config
        return {
            "max_new_tokens": st.max_tokens if isinstance(st.max_tokens, int) else c.max_new_tokens,
            "temperature": st.temperature if isinstance(st.temperature, (int, float)) else c.temperature,
            "top_p": st.top_p if isinstance(st.top_p, (int, float)) else c.top_p,
        }

    def _record_result(self, turn: Answer, result: EngineResult) -> None:
        s = turn.stats
        s.prompt_tokens = result.prompt_tokens
        s.audio_tokens = result.audio_tokens
        s.prefill_tokens = result.prefill_tokens
        s.prefill_ms = result.prefill_s * 1000
        s.cached_tokens = result.cached_tokens
        s.completion_tokens = result.completion_tokens
        s.generate_calls = result.generate_calls
        s.preemptions = result.preemptions
        s.queued_ms = result.queued_s * 1000
        s.prepare_ms = result.prepare_s * 1000
        s.first_token_ms = None if result.first_token_s is None else result.first_token_s * 1000
        s.generate_ms = result.generate_s * 1000
        s.decode_tokens_per_s = result.decode_tokens_per_s
        logger.debug(
            f"{self}: turn {turn.index}: {result.prompt_tokens} prompt tokens ({result.audio_tokens} audio, "
            f"{result.prefill_tokens} prefilled, {s.ahead_prefill_tokens} ahead), {result.completion_tokens} "
            f"generated in {result.generate_calls} call(s), first token {s.first_token_ms or 0:.0f} ms"
        )

    def _close_turn(self, turn: Answer) -> None:
        """Put the bot's answer, as far as it was sent downstream, into the context (once)."""
        if turn.closed:
            return
        if turn.speculation is not None:
            turn.speculation.finished = True  # closed when confirmed (or discarded, unheard)
            return
        turn.closed = True
        turn.stats.text = turn.text
        if self.records_answers:  # else pipecat's assistant aggregator records what was spoken
            said = self._context.add_assistant(turn.text[turn.context_chars :])
            self._unplayed = (said, turn.context_chars)
        if self._turn is turn:
            self._turn = None

    async def _stop_turn(self):
        """Cancel the answer in flight: the engine stops within one decode step, nothing more is sent."""
        turn = self._turn
        if turn is None:
            return
        turn.stop()
        if turn.task is not None and not turn.task.done():
            turn.stats.interrupted = True
            await self.cancel_task(turn.task)
        self._close_turn(turn)
        await self.cancel_ttfb_metrics()
        logger.debug(f"{self}: turn {turn.index} stopped after {len(turn.text)} characters")

    async def _wait_turn(self):
        turn = self._turn
        if turn is not None and turn.task is not None and not turn.task.done():
            await asyncio.wait({turn.task})

    # ------------------------------------------------------------------------------------------
    # The speculative start's host (.speculation.SpeculationHost)

    def can_speculate(self) -> bool:
        return not self.offered_tools() and self._turn is None

    async def start_speculative(self, utterance: UserUtteranceFrame) -> None:
        await self._start_turn(utterance, speculative=True)

    def adopt(self, answer: Answer, finished: bool) -> None:
        self._turn_stats.append(answer.stats)
        self._take_ahead(answer.stats)
        if not finished:
            self._turn = answer

    async def release(self, frame: Frame) -> None:
        await self.push_frame(frame)

    def finish(self, answer: Answer) -> None:
        self._close_turn(answer)
        self._start_idle_work()

    async def withdraw(self, answer: Answer) -> None:
        # Nothing more is sent, nothing enters the context; its prefill was for the turn that follows.
        answer.discard(self.bill_ahead)
        if answer.task is not None and not answer.task.done():
            await self.cancel_task(answer.task)
        spec = answer.speculation
        if spec is not None:
            self._context.remove(spec.user)
            self._generate_calls = spec.calls_before  # it counts inferences for confirmed turns only

    # ------------------------------------------------------------------------------------------
    # Idle-time work (.idle) and what it costs the next turn

    def _start_idle_work(self) -> None:
        if self._speculation.turn is not None:
            return  # the engine is the speculative answer's (and the context may lose its user turn)
        self._idle.start()

    def bill_ahead(self, result: EngineResult) -> None:
        """Prefill done for the next turn before it starts (idle refresh, discarded speculation)."""
        self._ahead.add(result.prefill_tokens, result.prefill_s)


def _merged(total: EngineResult, more: EngineResult) -> EngineResult:
    """One turn's numbers over several requests (a function call and the answer after it)."""
    total.token_ids.extend(more.token_ids)
    total.text += more.text
    for name in ("prompt_tokens", "audio_tokens", "prefill_tokens", "generate_calls", "preemptions"):
        setattr(total, name, getattr(total, name) + getattr(more, name))
    total.generate_s += more.generate_s
    total.prepare_s += more.prepare_s
    total.prefill_s += more.prefill_s
    total.cancelled = more.cancelled
    total.finish_reason = more.finish_reason
    if total.first_token_s is None:
        total.first_token_s = more.first_token_s
    return total
