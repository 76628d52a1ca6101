"""The examples stay importable and document the one command that runs them."""

from __future__ import annotations

import ast
import py_compile
from pathlib import Path

import pytest

EXAMPLES = sorted(
    p for p in (Path(__file__).parent.parent / "examples").glob("*.py") if not p.name.startswith("_")
)


def test_the_examples_exist():
    names = {p.name for p in EXAMPLES}
    assert {
        "browser_bot.py",
        "daily_bot.py",
        "websocket_bot.py",
        "websocket_client.py",
        "custom_pipeline.py",
    } <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_compiles_and_says_how_to_run_it(path):
    py_compile.compile(str(path), doraise=True)
    doc = ast.get_docstring(ast.parse(path.read_text()))
    assert doc and f"python examples/{path.name}" in doc
