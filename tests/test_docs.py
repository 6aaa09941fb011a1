"""The docs say what the code does: docs/cli.md is generated from the commands and current,
and names every command and option; every example in a docstring runs as written."""

from __future__ import annotations

import doctest
import importlib
import importlib.util
import pkgutil
from pathlib import Path

import pytest
from typer.main import get_command

import pipeline
from pipeline.cli import app

ROOT = Path(__file__).resolve().parents[1]


def _generator():
    spec = importlib.util.spec_from_file_location("gen_cli", ROOT / "docs" / "gen_cli.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_reference_is_current():
    text = (ROOT / "docs" / "cli.md").read_text()
    assert text == _generator().render(), "docs/cli.md is stale: run python docs/gen_cli.py"


def test_cli_reference_names_every_command_and_option():
    text = (ROOT / "docs" / "cli.md").read_text()
    root = get_command(app)
    commands = []
    for name, cmd in root.commands.items():
        subs = getattr(cmd, "commands", None)
        commands += [(f"{name} {s}", c) for s, c in subs.items()] if subs else [(name, cmd)]
    assert len(commands) >= 10
    for name, cmd in commands:
        assert f"## rnnpipe {name}\n" in text, name
        for param in cmd.params:
            for opt in param.opts if param.param_type_name == "option" else []:
                assert f"`{opt}" in text or f" {opt}`" in text or f"/ {opt}" in text, (name, opt)


MODULES = sorted(m.name for m in pkgutil.walk_packages(pipeline.__path__, "pipeline."))


@pytest.mark.parametrize("name", MODULES)
def test_the_docstring_examples_hold(name):
    # an example is the code as a reader meets it: it must say what the code does
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, name


def test_the_examples_are_found():
    # the walk reaches the modules whose docstrings hold examples (else the test above is empty)
    for name in ("pipeline.io", "pipeline.text", "pipeline.text.rules", "pipeline.text.tokenizer"):
        assert name in MODULES
        assert doctest.testmod(importlib.import_module(name)).attempted > 0, name
