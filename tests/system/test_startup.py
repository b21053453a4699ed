"""Commands that classify nothing never load the model stack, each in a real process of its own."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.startupprobe import LIGHT_COMMANDS, launch, prepare


@pytest.mark.parametrize("name", list(LIGHT_COMMANDS))
def test_a_command_that_classifies_nothing_loads_no_model_stack(name: str, tmp_path: Path) -> None:
    """torch, transformers and sentence-transformers are absent from sys.modules when it exits."""
    root = prepare(tmp_path)
    run = launch(LIGHT_COMMANDS[name], root, tmp_path)
    assert run["exit_code"] in (0, 1, 2), run["stderr"]  # status/undo answer 1 or 2 on an idle root
    assert "Traceback" not in run["stderr"]
    assert run["model_stack"] == []


def test_a_command_that_classifies_loads_it(tmp_path: Path) -> None:
    """The probe itself sees the model stack where it is loaded (`eval` builds class indexes)."""
    root = prepare(tmp_path)
    (tmp_path / "not-a-model").mkdir()  # a folder: the checks before the model stack let it through
    run = launch(["eval", "--root", "{root}", "--model", str(tmp_path / "not-a-model")], root, tmp_path)
    assert run["exit_code"] == 2 and "cannot load the model folder" in run["stderr"]
    assert "torch" in run["model_stack"]
