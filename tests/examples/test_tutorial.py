"""docs/tutorial.md, followed from top to bottom in an empty directory.

Every fenced ``python`` and ``html`` block of the tutorial is a whole file whose
first line names it (``# chat/models.py``, ``{# chat/templates/chat/base.html
#}``); a later block for the same file replaces it. The test reads the page in
order, as a reader types it:

- each file block is written into the project directory;
- each ``sh`` command line is run if it builds the project (``django-admin
  startproject``, ``manage.py startapp|makemigrations|migrate|test``,
  ``mkdir``, ``touch``); ``createsuperuser`` creates alice and bob without
  prompting; ``runserver`` starts the server and two users chat over
  WebSocket; the lines that install, or need Redis (step 8), are skipped; any
  other command fails the test, so the page cannot grow a command nobody ran;
- at the end of every step, ``manage.py check`` passes and ``mysite.asgi``
  imports: each step leaves a working project;
- at the end, ``tidings serve`` serves the project and two users chat and get
  notified over WebSocket.

The last version of each file must be the file of ``examples/chat``, which
the other tests of this directory run in more depth (Redis, several processes,
the worker, the browser).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ._chat import (
    EXAMPLE,
    PASSWORD,
    REPO,
    ChatSite,
    Server,
    example_env,
    login,
    receive,
    receive_type,
    websocket,
)

TUTORIAL = REPO / "docs" / "tutorial.md"
HEADERS = {"python": re.compile(r"# (\S+)$"), "html": re.compile(r"\{# (\S+) #\}$")}
USERS = ("alice", "bob")

# Files of examples/chat that the tutorial does not write: the example's own notes and
# lint settings, what startproject and startapp write, the generated migration, and
# the demo's user command.
NOT_IN_THE_TUTORIAL = {
    "README.md",
    "ruff.toml",
    "manage.py",
    "chat/apps.py",
    "chat/migrations/0001_initial.py",
    "chat/management/commands/demousers.py",
}


@dataclass
class Block:
    language: str
    line: int  # of the opening fence, 1-based
    step: str  # the heading of the step it is in
    lines: list[str]

    def __str__(self) -> str:
        return f"docs/tutorial.md:{self.line} ({self.language})"

    @property
    def path(self) -> str:
        header = HEADERS[self.language].fullmatch(self.lines[0]) if self.lines else None
        assert header is not None, f"{self} does not start by naming its file"
        return header.group(1)

    @property
    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def blocks(text: str) -> list[Block]:
    found: list[Block] = []
    current: Block | None = None
    step = ""
    for number, line in enumerate(text.splitlines(), 1):
        if current is None:
            if line.startswith("## "):
                step = line[3:]
            opening = re.fullmatch(r"```(\w*)", line)
            if opening:
                current = Block(opening.group(1), number, step, [])
        elif line == "```":
            found.append(current)
            current = None
        else:
            current.lines.append(line)
    assert current is None, f"unclosed block at docs/tutorial.md:{current.line}"
    return found


ALL_BLOCKS = blocks(TUTORIAL.read_text())
FILE_BLOCKS = [b for b in ALL_BLOCKS if b.language in HEADERS]


def final_files() -> dict[str, str]:
    """Each file's last version in the tutorial."""
    return {block.path: block.text for block in FILE_BLOCKS}


def test_the_tutorial_has_file_blocks_and_only_known_languages() -> None:
    assert len(FILE_BLOCKS) >= 20
    assert {b.language for b in ALL_BLOCKS} <= {"python", "html", "sh"}
    for block in FILE_BLOCKS:
        assert block.path  # names its file
        if block.language == "python":
            compile(block.text, str(block), "exec")


def test_the_tutorial_ends_with_the_files_of_examples_chat() -> None:
    files = final_files()
    for path, text in files.items():
        example = EXAMPLE / path
        assert example.is_file(), f"the tutorial writes {path}, which examples/chat lacks"
        assert example.read_text() == text, f"{path} differs from examples/chat/{path}"
    example_files = {
        p.relative_to(EXAMPLE).as_posix()
        for p in EXAMPLE.rglob("*")
        if p.is_file()
        and not any(part.startswith(".") or part == "__pycache__" for part in p.parts)
        and not p.name.startswith("db.sqlite3")
    }
    left_out = {p for p in example_files - set(files) if not p.endswith("__init__.py")}
    assert left_out == NOT_IN_THE_TUTORIAL


# -- following the tutorial ---------------------------------------------------------------


class TutorialSite(ChatSite):
    """The project the tutorial builds, in an empty directory (not a copy of the example)."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True)
        self.root = root


def command_lines(block: Block) -> Iterator[list[str]]:
    for line in block.lines:
        for part in line.split("&&"):
            words = shlex.split(part, comments=True)
            if words:
                yield words


def run(site: TutorialSite, words: list[str], where: str) -> subprocess.CompletedProcess[str]:
    completed = subprocess.run(
        words,
        cwd=site.root,
        env=example_env(site.root) | {"DJANGO_SUPERUSER_PASSWORD": PASSWORD},
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert completed.returncode == 0, (
        f"{where}: {shlex.join(words)} failed:\n{completed.stdout}\n{completed.stderr}"
    )
    return completed


STEP_CHECK = """
import os
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")
import django
django.setup()
from django.core.management import call_command
call_command("check", fail_level="WARNING")
import mysite.asgi
"""


async def chat(server: Server, room: str, *, notifications: bool) -> None:
    """alice and bob in ``room``: each one's message reaches both; with ``notifications``,
    a mention of bob reaches his notifications socket too."""
    async with (
        login(server, "alice") as alice,
        login(server, "bob") as bob,
        websocket(server, f"/ws/chat/{room}/", alice) as alice_ws,
        websocket(server, f"/ws/chat/{room}/", bob) as bob_ws,
    ):
        for sender, text in ((alice_ws, "hello bob"), (bob_ws, "hello alice")):
            await sender.send(json.dumps({"type": "message", "text": text}))
            for ws in (alice_ws, bob_ws):
                message = await receive(ws)
                assert (message["type"], message["text"]) == ("message", text)
        page = await bob.get(f"/chat/{room}/")
        assert "hello alice" in page.text  # saved, and in the page's history
        if notifications:
            async with websocket(server, "/ws/notifications/", bob) as bob_notes:
                await alice_ws.send(json.dumps({"type": "message", "text": "tea, @bob?"}))
                note = await receive_type(bob_notes, "notification")
                assert note["text"] == f"alice mentioned you in {room}: tea, @bob?"


def run_commands(site: TutorialSite, block: Block, served: list[str]) -> None:
    for words in command_lines(block):
        where = str(block)
        program = words[0]
        if program == "django-admin":
            run(site, [sys.executable, "-m", "django", *words[1:]], where)
        elif program in ("mkdir", "touch"):
            run(site, words, where)
        elif program == "python" and words[1] == "manage.py":
            command = words[2]
            if command in ("startapp", "makemigrations", "migrate"):
                run(site, [sys.executable, *words[1:]], where)
            elif command == "test":
                completed = run(site, [sys.executable, *words[1:]], where)
                written = (site.root / "chat" / "tests.py").read_text().count("def test_")
                assert f"\nRan {written} tests in " in completed.stderr, completed.stderr
                assert re.search(r"^OK$", completed.stderr, re.MULTILINE), completed.stderr
            elif command == "createsuperuser":
                for user in USERS:
                    email = f"--email={user}@example.com"
                    run(
                        site,
                        [sys.executable, *words[1:], "--noinput", f"--username={user}", email],
                        where,
                    )
            elif command == "runserver":
                with site.serve(runserver=True, name="runserver") as server:
                    asyncio.run(chat(server, "lobby", notifications=False))
                served.append(block.step)
            elif command in ("runworker", "notify") and block.step.startswith("8."):
                pass  # with Redis: tests/examples/test_chat.py runs them on examples/chat
            else:
                raise AssertionError(f"{where}: the test does not know {shlex.join(words)}")
        elif program in ("python3", "pip", "export") or words[:2] == ["tidings", "serve"]:
            pass  # making the environment (the test's is made), or step 8's Redis
        elif program == ".":
            pass  # activating the virtual environment
        else:
            raise AssertionError(f"{where}: the test does not know {shlex.join(words)}")


def test_the_tutorial_builds_a_working_project(tmp_path: Path) -> None:
    site = TutorialSite(tmp_path / "tutorial")
    served: list[str] = []
    steps_checked: list[str] = []

    def check_step(step: str) -> None:
        if (site.root / "manage.py").exists():
            run(site, [sys.executable, "-c", STEP_CHECK], f"the end of step {step!r}")
            steps_checked.append(step)

    step = ""
    for block in ALL_BLOCKS:
        if block.step != step:
            check_step(step)
            step = block.step
        if block.language == "sh":
            run_commands(site, block, served)
        else:
            path = site.root / block.path
            if block.language == "python":  # a package the commands made, not a new folder
                assert path.parent.is_dir(), f"{block}: {block.path}'s package does not exist"
            path.parent.mkdir(parents=True, exist_ok=True)  # templates/ folders
            path.write_text(block.text)
    check_step(step)

    assert served == ["4. The chat consumer"]
    assert len(steps_checked) == 9
    for path, text in final_files().items():
        assert (site.root / path).read_text() == text
    commands = run(site, [sys.executable, "manage.py", "help", "--commands"], "help")
    used = {
        m.group(1)
        for b in ALL_BLOCKS
        if b.language == "sh"
        for m in re.finditer(r"manage\.py (\w+)", b.text)
    }
    assert used <= set(commands.stdout.split()), used - set(commands.stdout.split())

    with site.serve(name="tidings-serve") as server:
        asyncio.run(chat(server, "kitchen", notifications=True))
    assert os.path.exists(site.root / "db.sqlite3")
