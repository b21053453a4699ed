"""The hand-written parts of the docs that name code stay true to it."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

from clipsort import errors

REPO = Path(__file__).resolve().parents[2]


def documented_tree(text: str) -> dict[str, str | None]:
    """Each class in the first code block's tree, with its parent (None for the root)."""
    block = text.split("```\n", 2)[1]
    parents: dict[str, str | None] = {}
    path: list[str] = []
    for line in block.splitlines():
        match = re.search(r"[A-Za-z]+", line)
        if match is None:
            continue
        depth = match.start() // 4
        del path[depth:]
        parents[match.group()] = path[-1] if path else None
        path.append(match.group())
    return parents


def coded_tree() -> dict[str, str | None]:
    """Each exception class errors.py defines, with its base (None for ClipsortError)."""
    classes = {
        name: value
        for name, value in vars(errors).items()
        if isinstance(value, type) and issubclass(value, errors.ClipsortError)
    }
    return {
        name: None if cls is errors.ClipsortError else cls.__bases__[0].__name__
        for name, cls in classes.items()
    }


def test_the_documented_exception_tree_is_errors_py() -> None:
    """docs/reference/errors.md draws every class of errors.py under its parent, and nothing else."""
    documented = documented_tree((REPO / "docs" / "reference" / "errors.md").read_text())
    assert documented == coded_tree()


def test_errors_py_draws_the_same_tree_in_its_docstring() -> None:
    """The tree in errors.py's own docstring is the same tree."""
    tree = textwrap.dedent((errors.__doc__ or "").split("::\n\n", 1)[1].split("\n\n", 1)[0])
    assert documented_tree(f"```\n{tree}\n```") == coded_tree()


def test_a_tree_that_misplaces_a_class_is_told_apart() -> None:
    """The parser reads nesting: a class drawn under the wrong parent does not match."""
    wrong = "```\nClipsortError\n├── DatasetError\n│   └── ConfigError\n```\n"
    assert documented_tree(wrong) == {
        "ClipsortError": None,
        "DatasetError": "ClipsortError",
        "ConfigError": "DatasetError",
    }
