"""eot_bench's driver: corpus utterances through pipecat's turn controller and our strategies."""

from __future__ import annotations

import pytest

from benchmarks import eot_bench as eb
from voxtral_pipeline.testing import eot_corpus as ec
from voxtral_pipeline.testing.speech import needs_espeak


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    wanted = {"q00": None, "p15": None}  # a complete question; "I'd like to, uh, [0.5 s] book a flight"
    items = [i for i in ec.ITEMS if i.id in wanted]
    return ec.load_corpus(["espeak"], items=items, cache=tmp_path_factory.mktemp("eot"))


@needs_espeak
async def test_both_strategies_end_the_question_and_keep_the_filler_pause(sample):
    question, paused = sample
    assert paused.pauses and 0.3 <= paused.pauses[0][1] - paused.pauses[0][0] <= 2.0
    for config in (eb.pipecat_default(), eb.ours()):
        q = await eb.run_utterance(question, config)
        assert not q.cut and q.dead_air_ms is not None and 0 < q.dead_air_ms < 3500
        assert q.stops and q.stops[-1] > question.end  # confirmed after the real end, on the virtual clock
        p = await eb.run_utterance(paused, config)
        assert not p.cut and p.pauses_cut == [] and p.dead_air_ms is not None


@needs_espeak
async def test_a_config_row_has_the_reported_figures(sample):
    row = await eb.run_config("ours", eb.ours(), sample)
    assert row["utterances"] == 2 and row["cutoffs"] == 0 and row["cutoff_rate"] == 0.0
    assert row["dead_air_ms"]["p50"] is not None and row["no_end"] == 0
    assert row["thinking_pauses_le_1_5s"] == 1 and row["thinking_pauses_le_1_5s_cut"] == 0
    assert set(row["by_kind"]) == {"question", "filler"}
