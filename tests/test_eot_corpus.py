"""The end-of-turn corpus: its makeup, exact labels, and the cache (espeak-ng renders a sample)."""

from __future__ import annotations

import numpy as np
import pytest

from voxtral_pipeline.testing import eot_corpus as ec
from voxtral_pipeline.testing.speech import needs_espeak


def test_the_scripts_cover_what_the_benchmark_needs():
    kinds = {i.kind for i in ec.ITEMS}
    assert {"question", "statement", "short", "number", "code", "pause", "filler", "list"} <= kinds
    assert len(ec.ITEMS) * len(ec.ENGINES) >= 150
    pauses = [p for i in ec.ITEMS for p in i.parts if isinstance(p, float)]
    assert pauses and min(pauses) >= 0.3 and max(pauses) <= 2.0
    assert len({i.id for i in ec.ITEMS}) == len(ec.ITEMS)
    # Fillers are spoken in the fragment before the pause, with and without.
    assert any("um" in i.parts[0] for i in ec.ITEMS if i.kind == "filler")


def test_unknown_engine_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="unknown speech engine 'festival'"):
        ec.load_corpus(["festival"], items=ec.ITEMS[:1], cache=tmp_path)


@needs_espeak
def test_rendered_labels_are_exact_and_the_cache_is_reused(tmp_path, monkeypatch):
    items = [next(i for i in ec.ITEMS if i.kind == k) for k in ("question", "short", "filler")]
    items.append(next(i for i in ec.ITEMS if sum(isinstance(p, float) for p in i.parts) == 2))
    corpus = ec.load_corpus(["espeak"], items=items, cache=tmp_path)
    assert [u.id for u in corpus] == [f"espeak-{i.id}" for i in items]
    for u, item in zip(corpus, items, strict=True):
        x = u.audio()
        rate = ec.RATE
        # Pauses are exactly the script's, and silent; speech is where the labels say.
        assert [round(b - a, 3) for a, b in u.pauses] == [p for p in item.parts if isinstance(p, float)]
        for a, b in u.pauses:
            assert np.abs(x[int(a * rate) + 1 : int(b * rate) - 1]).max() == 0.0
        for a, b in u.segments:
            assert np.abs(x[int(a * rate) : int(b * rate)]).max() > 0.1
        assert np.abs(x[: int(u.start * rate) - 1]).max() == 0.0
        assert np.abs(x[int(u.end * rate) + 1 :]).max() == 0.0
        assert u.start == pytest.approx(ec.LEAD_SECS)
        assert u.duration - u.end == pytest.approx(ec.TAIL_SECS, abs=0.01)

    # A second load reads the manifest back without rendering anything.
    def no_render(*_a, **_k):
        raise AssertionError("rendered again")

    monkeypatch.setattr(ec._Renderers, "render", no_render)
    again = ec.load_corpus(["espeak"], items=items, cache=tmp_path)
    assert [(u.id, u.segments) for u in again] == [(u.id, u.segments) for u in corpus]
    mk = ec.makeup(again)
    assert mk["utterances"] == 4 and mk["by_engine"] == {"espeak": 4} and mk["pauses"] == 3
