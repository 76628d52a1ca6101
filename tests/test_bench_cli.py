"""The benchmarks' shared command line: model defaults and where their JSON results land."""

from __future__ import annotations

import argparse
import json
import re

from voxtral_pipeline.testing.bench_cli import add_common_args, write_results


def _parse(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_common_args(p)
    return p.parse_args(list(argv))


def test_defaults_are_dummy_models_on_the_cpu():
    args = _parse()
    assert (args.model, args.tts_model, args.device, args.out) == ("dummy:tiny", "dummy:tiny", "cpu", None)


def test_results_are_named_after_the_benchmark_model_device_and_time(tmp_path, capsys):
    args = _parse("--model", "dummy:full", "--device", "cuda")
    out = write_results({"levels": [1, 2]}, tmp_path / "results", "load_bench", args)
    assert out.parent == tmp_path / "results"
    assert re.fullmatch(r"load_bench-dummy-full-cuda-\d{8}-\d{6}\.json", out.name), out.name
    assert json.loads(out.read_text(encoding="utf-8")) == {"levels": [1, 2]}
    assert capsys.readouterr().out == f"results: {out}\n"


def test_out_wins_and_its_folder_is_made(tmp_path, capsys):
    target = tmp_path / "deep" / "er" / "run.json"
    args = _parse("--out", str(target))
    assert write_results({"samples": []}, tmp_path / "unused", "soak_bench", args) == target
    assert json.loads(target.read_text(encoding="utf-8")) == {"samples": []}
    assert not (tmp_path / "unused").exists()
    assert capsys.readouterr().out == f"results: {target}\n"
