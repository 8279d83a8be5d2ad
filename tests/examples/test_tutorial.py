"""docs/tutorial.md shows the code of examples/chat, word for word.

Every fenced ``python`` and ``html`` block of the tutorial starts with a comment
naming a file of ``examples/chat`` (``# chat/models.py``, ``{# chat/templates/...
#}``). The rest of the block, split at elision lines (``# ...``, ``{# ... #}``),
must appear in that file verbatim, the pieces in order. The example's own
tests and the server tests (``test_chat.py``) then exercise that code.

Shell blocks are checked for what can go stale: every ``python manage.py
COMMAND`` names a command the example has, and ``tidings serve MODULE:ATTR``
names its ASGI application.
"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from functools import cache

import pytest

from ._chat import EXAMPLE, REPO, example_env

TUTORIAL = REPO / "docs" / "tutorial.md"
HEADERS = {"python": re.compile(r"# (\S+)$"), "html": re.compile(r"\{# (\S+) #\}$")}
ELISIONS = {"python": "# ...", "html": "{# ... #}"}


@dataclass
class Block:
    language: str
    line: int  # of the opening fence, 1-based
    lines: list[str]

    def __str__(self) -> str:
        return f"docs/tutorial.md:{self.line} ({self.language})"


def blocks(text: str) -> list[Block]:
    found: list[Block] = []
    current: Block | None = None
    for number, line in enumerate(text.splitlines(), 1):
        if current is None:
            opening = re.fullmatch(r"```(\w*)", line)
            if opening:
                current = Block(opening.group(1), number, [])
        elif line == "```":
            found.append(current)
            current = None
        else:
            current.lines.append(line)
    assert current is None, f"unclosed block at docs/tutorial.md:{current.line}"
    return found


def pieces(block: Block) -> list[str]:
    """The runs of lines between elisions, without the header line."""
    runs: list[list[str]] = [[]]
    for line in block.lines[1:]:
        if line.strip() == ELISIONS[block.language]:
            runs.append([])
        else:
            runs[-1].append(line)
    return ["\n".join(run).strip("\n") for run in runs if "".join(run).strip()]


ALL_BLOCKS = blocks(TUTORIAL.read_text())
CODE_BLOCKS = [b for b in ALL_BLOCKS if b.language in HEADERS]


def test_the_tutorial_has_code_blocks_and_only_known_languages() -> None:
    assert len(CODE_BLOCKS) >= 20
    assert {b.language for b in ALL_BLOCKS} <= {"python", "html", "sh"}


@pytest.mark.parametrize("block", CODE_BLOCKS, ids=str)
def test_each_code_block_is_an_excerpt_of_the_example(block: Block) -> None:
    header = HEADERS[block.language].fullmatch(block.lines[0]) if block.lines else None
    assert header is not None, f"{block} does not start by naming its file"
    path = EXAMPLE / header.group(1)
    assert path.is_file(), f"{block} names {header.group(1)}, which examples/chat lacks"
    source = path.read_text()
    position = 0
    for piece in pieces(block):
        found = source.find(piece, position)
        assert found >= 0, (
            f"{block}: this is not in {header.group(1)}"
            + (" (after the block's previous piece)" if source.find(piece) >= 0 else "")
            + f":\n{piece}"
        )
        position = found + len(piece)


@cache
def manage_commands() -> frozenset[str]:
    completed = subprocess.run(
        [sys.executable, "manage.py", "help", "--commands"],
        cwd=EXAMPLE,
        env=example_env(EXAMPLE) | {"PYTHONDONTWRITEBYTECODE": "1"},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return frozenset(completed.stdout.split())


def test_shell_blocks_name_commands_and_modules_that_exist() -> None:
    commands = [line for b in ALL_BLOCKS if b.language == "sh" for line in b.lines if line.strip()]
    used = {m.group(1) for c in commands for m in re.finditer(r"manage\.py (\w+)", c)}
    assert used >= {"migrate", "runserver", "runworker", "notify", "test"}
    assert used <= manage_commands(), used - manage_commands()
    for command in commands:
        served = re.search(r"tidings serve (\S+):(\w+)", command)
        if served:
            module = EXAMPLE / (served.group(1).replace(".", "/") + ".py")
            assert f"\n{served.group(2)} = " in module.read_text(), command
