"""Every code snippet in the docs is exercised: Python runs, commands parse, configs hold.

Theory of operation
-------------------
The fenced code blocks of ``README.md`` and ``docs/*.md`` are read by language:

- ``python``: every block compiles. Blocks whose first line names a file
  (``# chat/consumers.py``) are written into a scratch project and imported,
  in a fresh interpreter with the test settings; the other blocks run as they
  are there, and what they define is checked (``CHANNEL_LAYERS`` builds every
  alias, ``INSTALLED_APPS`` puts ``"tidings"`` before staticfiles, an
  ``application`` is callable). A block preceded by
  ``<!-- snippet: compile-only ... -->`` (code for another library) and a
  fragment with a top-level ``await`` only compile.
- ``sh``: each command line that runs ``tidings``, ``manage.py`` or a script of
  the repository is parsed by the real argument parser (``tidings serve``
  lines also build a valid server ``Config``); the migration guide's
  ``tidings migrate-imports`` commands are run on sample files.
- ``nginx``, ``haproxy``, ``ini`` (systemd units): checked for the settings
  the text around them claims (HTTP/1.1 and Upgrade headers, unbuffered event
  streams, timeouts above the server's keepalive intervals, ``KillMode``...),
  and the socket-activated unit is started the way systemd would start it.

Docs owned by other pages' authors (``tutorial.md``, ``transports.md``) are
left out unless they contain the line ``<!-- tidings-docs: test snippets -->``.
Relative links must point at files (and headings) that exist, and the README's
benchmark figures must be the ones in ``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
README = ROOT / "README.md"
OWNED_ELSEWHERE = {"tutorial.md", "transports.md"}
OPT_IN = "<!-- tidings-docs: test snippets -->"
LANGUAGES = {"python", "sh", "nginx", "haproxy", "ini", ""}


# -- reading the docs -----------------------------------------------------------------------


@dataclass(frozen=True)
class Block:
    doc: Path
    line: int  # of the opening fence, 1-based
    lang: str
    text: str
    directive: str  # the text of a <!-- snippet: ... --> comment just above, or ""

    @property
    def name(self) -> str:
        return f"{self.doc.relative_to(ROOT)}:{self.line}"


def _documents() -> list[Path]:
    docs = [README]
    for path in sorted(DOCS.glob("*.md")):
        if path.name not in OWNED_ELSEWHERE or OPT_IN in path.read_text():
            docs.append(path)
    return docs


def _blocks(path: Path) -> list[Block]:
    blocks: list[Block] = []
    lines = path.read_text().splitlines()
    index = 0
    while index < len(lines):
        opening = re.fullmatch(r"```([\w-]*)\s*", lines[index])
        if not opening:
            index += 1
            continue
        start = index
        index += 1
        body = []
        while index < len(lines) and lines[index].strip() != "```":
            body.append(lines[index])
            index += 1
        previous = next((line for line in reversed(lines[:start]) if line.strip()), "")
        directive = re.fullmatch(r"\s*<!-- snippet: (.*?) -->\s*", previous)
        blocks.append(
            Block(
                doc=path,
                line=start + 1,
                lang=opening.group(1),
                text="\n".join(body) + "\n",
                directive=directive.group(1) if directive else "",
            )
        )
        index += 1
    return blocks


def _all_blocks(lang: str | None = None) -> list[Block]:
    return [b for doc in _documents() for b in _blocks(doc) if lang is None or b.lang == lang]


def _params(blocks: list[Block]) -> Any:
    return pytest.mark.parametrize("block", blocks, ids=[b.name for b in blocks])


def test_the_docs_have_snippets_to_check() -> None:
    """Guards the extraction itself: a broken fence regex would make every test vacuous."""
    names = {doc.name for doc in _documents()}
    assert {"README.md", "migration.md", "deployment.md", "topics.md", "reference.md"} <= names
    languages = {b.lang for b in _all_blocks()}
    assert {"python", "sh", "nginx", "haproxy", "ini"} <= languages


@_params(_all_blocks())
def test_every_block_has_a_checked_language(block: Block) -> None:
    assert block.lang in LANGUAGES, (
        f"{block.name}: a ```{block.lang} block is not checked by tests/test_docs_snippets.py"
    )


# -- Python -----------------------------------------------------------------------------------

_FLAGS = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT


@_params(_all_blocks("python"))
def test_python_snippet_compiles(block: Block) -> None:
    compile(block.text, block.name, "exec", flags=_FLAGS)


def _file_of(block: Block) -> str | None:
    """``chat/consumers.py`` when the block's first line is ``# chat/consumers.py``."""
    match = re.match(r"#\s*([\w/]+\.py)\b", block.text)
    if match and not match.group(1).endswith("settings.py"):
        return match.group(1)
    return None


def _runnable(block: Block) -> bool:
    if block.directive.startswith("compile-only"):
        return False
    try:
        compile(block.text, block.name, "exec")
    except SyntaxError:
        return False  # a fragment with a top-level await: it compiled above, with the flag
    return True


def _run_in_child(blocks: list[Block], code: str = "") -> dict[str, Any]:
    """Run ``_child`` in a fresh interpreter on ``blocks``, then ``code``; return its report."""
    payload = {
        "blocks": [
            {"name": b.name, "text": b.text, "file": _file_of(b)} for b in blocks if _runnable(b)
        ],
        "code": code,
    }
    env = dict(os.environ, DJANGO_SETTINGS_MODULE="tests.django_settings")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, "-c", "from tests.test_docs_snippets import _child; _child()"],
        input=json.dumps(payload),
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 0, f"snippets failed:\n{proc.stdout}\n{proc.stderr}"
    report: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return report


def _child() -> None:  # pragma: no cover - runs in the child interpreter
    """Materialize file snippets, run the others, check what they define; print a report."""
    import asyncio
    import importlib
    import tempfile

    import django

    payload = json.loads(sys.stdin.read())
    django.setup()
    from django.test import override_settings

    from tidings.layers import channel_layers

    project = Path(tempfile.mkdtemp(prefix="tidings-snippets-"))
    sys.path.insert(0, str(project))
    checked: list[str] = []
    modules: list[str] = []
    for block in payload["blocks"]:
        if block["file"]:
            path = project / block["file"]
            path.parent.mkdir(parents=True, exist_ok=True)
            for parent in path.relative_to(project).parents:
                if str(parent) != ".":
                    (project / parent / "__init__.py").touch()
            path.write_text(block["text"])
            modules.append(block["file"].removesuffix(".py").replace("/", "."))
            continue
        namespace: dict[str, Any] = {"__name__": "snippet"}
        exec(compile(block["text"], block["name"], "exec"), namespace)
        if "CHANNEL_LAYERS" in namespace:
            layers = namespace["CHANNEL_LAYERS"]
            with override_settings(CHANNEL_LAYERS=layers):
                for alias, entry in layers.items():
                    channel_layers.make_backend(alias)
                    if "TEST_CONFIG" in entry:
                        channel_layers.make_test_backend(alias)
            checked.append(f"{block['name']}: CHANNEL_LAYERS")
        if "INSTALLED_APPS" in namespace:
            apps = list(namespace["INSTALLED_APPS"])
            assert "tidings" in apps, block["name"]
            assert "daphne" not in apps and "channels" not in apps, block["name"]
            if "django.contrib.staticfiles" in apps:
                assert apps.index("tidings") < apps.index("django.contrib.staticfiles")
            checked.append(f"{block['name']}: INSTALLED_APPS")
        if "application" in namespace:
            assert callable(namespace["application"]), block["name"]
            checked.append(f"{block['name']}: application")
        checked.append(block["name"])
    importlib.invalidate_caches()
    for module in modules:
        imported = importlib.import_module(module)
        if hasattr(imported, "application"):
            assert callable(imported.application), module
        checked.append(module)
    if payload["code"]:
        exec(compile(payload["code"], "check", "exec"), {"asyncio": asyncio})
    print(json.dumps({"checked": checked}))


_PYTHON_DOCS = sorted({b.doc for b in _all_blocks("python")})


@pytest.mark.parametrize("doc", _PYTHON_DOCS, ids=[d.name for d in _PYTHON_DOCS])
def test_python_snippets_run(doc: Path) -> None:
    blocks = [b for b in _blocks(doc) if b.lang == "python"]
    report = _run_in_child(blocks)
    assert len(report["checked"]) >= sum(_runnable(b) for b in blocks)


def test_some_python_snippets_are_really_run() -> None:
    runnable = [b for b in _all_blocks("python") if _runnable(b)]
    assert len(runnable) >= 10
    assert any(_file_of(b) == "mysite/asgi.py" for b in runnable)


_MIGRATION_CHAT_CHECK = """
import json
from tidings.testing import WebsocketCommunicator
from mysite.asgi import application

async def main():
    headers = [(b"origin", b"http://localhost"), (b"host", b"localhost")]
    alice = WebsocketCommunicator(application, "/ws/chat/lobby/", headers=headers)
    bob = WebsocketCommunicator(application, "/ws/chat/lobby/", headers=headers)
    assert (await alice.connect())[0] and (await bob.connect())[0]
    await alice.send_to(text_data=json.dumps({"message": "hello"}))
    for client in (alice, bob):
        assert json.loads(await client.receive_from()) == {"message": "hello"}
    other = WebsocketCommunicator(
        application, "/ws/chat/lobby/", headers=[(b"origin", b"http://evil.example")]
    )
    assert not (await other.connect())[0]  # AllowedHostsOriginValidator refuses it
    await alice.disconnect()
    await bob.disconnect()

asyncio.run(main())
"""


def test_migrated_tutorial_chat_works() -> None:
    """The migration guide's consumer, routing and asgi.py: two clients chat in one room."""
    doc = DOCS / "migration.md"
    blocks = [b for b in _blocks(doc) if b.lang == "python" and _file_of(b)]
    assert {_file_of(b) for b in blocks} >= {"chat/consumers.py", "chat/routing.py"}
    _run_in_child(blocks, _MIGRATION_CHAT_CHECK)


# -- shell -------------------------------------------------------------------------------------


def _commands(block: Block) -> Iterator[list[str]]:
    """The command lines of a shell block, split into words (continuations joined)."""
    text = re.sub(r"\\\n\s*", " ", block.text)
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        for part in re.split(r"\s(?:&&|\|\||;)\s", line):
            words = shlex.split(part, comments=True)
            while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
                words = words[1:]  # VAR=value prefixes
            if words:
                yield words


def _serve_parser() -> Any:
    from tidings.cli import _make_parser

    return _make_parser()


def _check_tidings(words: list[str], where: str) -> str:
    from tidings.server._cli import build_config

    parser = _serve_parser()
    ns = parser.parse_args(words)
    # argparse also takes unambiguous prefixes (--work for --workers): the docs must not.
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    options = {o for action in sub.choices[ns.command]._actions for o in action.option_strings}
    for word in words:
        if word.startswith("--"):
            assert word.split("=", 1)[0] in options, f"{where}: {word} is not a flag's full name"
    if ns.command == "serve":
        build_config(ns)  # raises ConfigError on a bad value
    return f"tidings {ns.command}"


def _check_manage(words: list[str], where: str) -> str | None:
    """Parse ``manage.py runserver|runworker ...`` with Tidings' commands (others: None)."""
    from django.core.management import load_command_class

    name = words[0]
    if name not in ("runserver", "runworker"):
        return None  # Django's or the project's own command
    load_command_class("tidings", name).create_parser("manage.py", name).parse_args(words[1:])
    return f"manage.py {name}"


def _check_command(words: list[str], where: str) -> str | None:
    """Parse one command line if it is ours; return what it was, or None."""
    program = words[0]
    python = Path(program).name.startswith("python")
    if Path(program).name == "tidings":
        return _check_tidings(words[1:], where)
    if python and words[1:3] == ["-m", "tidings"]:
        return _check_tidings(words[3:], where)
    if python and len(words) > 1 and words[1].endswith("manage.py"):
        return _check_manage(words[2:], where)
    if program.startswith("./scripts/"):
        script = ROOT / program
        assert script.is_file() and os.access(script, os.X_OK), f"{where}: {program} missing"
        if program == "./scripts/bench":
            for word in words[1:]:
                if not word.startswith("-"):
                    assert (ROOT / "benchmarks" / f"{word}.py").is_file(), f"{where}: {word}"
        return program
    if python and len(words) > 1 and words[1].startswith("benchmarks/"):
        assert (ROOT / words[1]).is_file(), f"{where}: {words[1]} missing"
        return words[1]
    return None


_SHELL = _all_blocks("sh")


@_params(_SHELL)
def test_shell_snippet_commands_parse(block: Block) -> None:
    for words in _commands(block):
        _check_command(words, block.name)


def test_shell_snippets_name_real_commands() -> None:
    """Our command lines are recognised at all (else the test above checks nothing)."""
    seen = {c for b in _SHELL for w in _commands(b) if (c := _check_command(w, b.name))}
    assert {"tidings serve", "./scripts/demo", "./scripts/test"} <= seen


def test_a_bad_flag_in_a_snippet_would_fail() -> None:
    with pytest.raises(SystemExit):
        _check_command(["tidings", "serve", "app:app", "--wrokers", "4"], "here")
    with pytest.raises(SystemExit):  # abbreviations are refused by the parser itself
        _check_command(["tidings", "serve", "app:app", "--worker", "4"], "here")
    from tidings.server.config import ConfigError

    with pytest.raises(ConfigError):
        _check_command(["tidings", "serve", "app:app", "--workers", "0"], "here")


def test_readme_quick_start_is_exactly_two_commands() -> None:
    text = README.read_text()
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    (block,) = [b for b in _blocks(README) if b.lang == "sh" and b.text.strip() in section]
    assert [words[0] for words in _commands(block)] == ["./scripts/demo", "./scripts/test"]


_SAMPLE = """\
from channels.generic.websocket import AsyncWebsocketConsumer
import channels.layers
if True:
    from channels.db import database_sync_to_async
from channels_redis.core import RedisChannelLayer
layer = channels.layers.get_channel_layer()  # from channels.layers stays a comment
"""
_EXPECTED = """\
from tidings.generic.websocket import AsyncWebsocketConsumer
import tidings.layers
if True:
    from tidings.db import database_sync_to_async
from tidings.layers.redis import RedisChannelLayer
layer = tidings.layers.get_channel_layer()  # from channels.layers stays a comment
"""


def test_migration_rewrite_commands(tmp_path: Path) -> None:
    """The guide's ``tidings migrate-imports`` lines: a dry run, then ``--write``."""
    (block,) = [
        b for b in _blocks(DOCS / "migration.md") if b.lang == "sh" and "migrate-imports" in b.text
    ]
    commands = list(_commands(block))
    assert [words[:2] for words in commands] == [["tidings", "migrate-imports"]] * 2
    sample, expected = _SAMPLE, _EXPECTED
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "consumers.py").write_text(sample)
    (tmp_path / ".venv").mkdir()
    (tmp_path / ".venv" / "lib.py").write_text(sample)
    (tmp_path / "notes.txt").write_text("from channels.layers import x\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    outputs = []
    for words in commands:
        completed = subprocess.run(
            [sys.executable, "-m", "tidings", *words[1:]],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        outputs.append(completed.stdout)
    assert "+from tidings.generic.websocket import AsyncWebsocketConsumer" in outputs[0]
    assert (tmp_path / "app" / "consumers.py").read_text() == expected
    assert (tmp_path / ".venv" / "lib.py").read_text() == sample
    assert (tmp_path / "notes.txt").read_text() == "from channels.layers import x\n"


# -- nginx and HAProxy ----------------------------------------------------------------------------


def _nginx_locations(text: str) -> dict[str, str]:
    """Each ``location PATH { ... }`` block's body, by path (no nesting in our examples)."""
    return {m.group(1): m.group(2) for m in re.finditer(r"location\s+(\S+)\s*\{([^}]*)\}", text)}


def _seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+)(ms|s|m|h)?", value)
    assert match, value
    scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[match.group(2) or "s"]
    return int(match.group(1)) * scale


def _keepalive_intervals() -> dict[str, float]:
    """Seconds between the bytes Tidings sends on an idle long-lived response or socket."""
    from tidings.server.config import DEFAULT_WS_PING_INTERVAL

    intervals = {"--ws-ping-interval": DEFAULT_WS_PING_INTERVAL}
    try:
        from tidings.transports.config import TransportSettings
    except ImportError:  # the fallback transports are not built yet
        return intervals
    settings = TransportSettings()
    intervals["poll_hold"] = settings.poll_hold
    intervals["sse_heartbeat"] = settings.sse_heartbeat
    return intervals


_NGINX = _all_blocks("nginx")


@_params(_NGINX)
def test_nginx_config(block: Block) -> None:
    from tidings.server.config import DEFAULT_MAX_BODY_SIZE

    text = re.sub(r"#.*", "", block.text)
    assert text.count("{") == text.count("}"), f"{block.name}: unbalanced braces"
    for line in text.splitlines():
        line = line.strip()
        assert not line or line[-1] in "{};", f"{block.name}: {line!r} does not end with ;"
    locations = _nginx_locations(text)
    proxied = {path: body for path, body in locations.items() if "proxy_pass" in body}
    assert proxied, f"{block.name}: no proxied location"
    for path, body in proxied.items():
        assert "proxy_http_version 1.1;" in body, f"{block.name} location {path}"
        assert "X-Forwarded-For $proxy_add_x_forwarded_for;" in body, path
        assert "X-Forwarded-Proto $scheme;" in body, path
    websocket = [body for body in proxied.values() if "Upgrade $http_upgrade" in body]
    assert websocket, f"{block.name}: no location passes the Upgrade header"
    assert re.search(r"map \$http_upgrade \$connection_upgrade \{", text)
    for body in websocket:
        assert "proxy_set_header Connection $connection_upgrade;" in body
        assert "proxy_buffering off;" in body  # event streams use the WebSocket URLs
        timeout = re.search(r"proxy_read_timeout (\S+);", body)
        read_timeout = _seconds(timeout.group(1)) if timeout else 60.0  # nginx's default
        for name, interval in _keepalive_intervals().items():
            assert read_timeout > interval, f"proxy_read_timeout {read_timeout} <= {name}"
    size = re.search(r"client_max_body_size (\d+)m;", text)
    if size:
        assert int(size.group(1)) * 1024 * 1024 == DEFAULT_MAX_BODY_SIZE


_HAPROXY = _all_blocks("haproxy")


@_params(_HAPROXY)
def test_haproxy_config(block: Block) -> None:
    text = re.sub(r"#.*", "", block.text)
    settings = [line.split() for line in text.splitlines() if line.strip()]
    assert ["mode", "http"] in settings
    assert ["option", "forwardfor"] in settings
    assert any(s[:2] == ["timeout", "tunnel"] for s in settings), "WebSockets need timeout tunnel"
    (server_timeout,) = [_seconds(s[2]) for s in settings if s[:2] == ["timeout", "server"]]
    for name, interval in _keepalive_intervals().items():
        assert server_timeout > interval, f"timeout server {server_timeout} <= {name}"
    assert "X-Forwarded-Proto https" in text
    for s in settings:
        if s[0] == "server":
            assert "check" in s, f"{block.name}: {' '.join(s)} has no health check"


# -- systemd --------------------------------------------------------------------------------------


def _unit(block: Block) -> dict[str, dict[str, list[str]]]:
    """A unit file: section -> key -> values (keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for line in block.text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        header = re.fullmatch(r"\[(\w+)\]", line)
        if header:
            current = sections.setdefault(header.group(1), {})
            continue
        key, sep, value = line.partition("=")
        assert sep and current is not None, f"{block.name}: bad line {line!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


_UNITS = _all_blocks("ini")


@_params(_UNITS)
def test_systemd_unit(block: Block) -> None:
    from tidings.server._cli import build_config
    from tidings.worker import DEFAULT_SHUTDOWN_TIMEOUT

    unit = _unit(block)
    assert set(unit) <= {"Unit", "Service", "Socket", "Install"}, block.name
    service = unit.get("Service")
    if service is None:
        assert "ListenStream" in unit["Socket"], block.name
        return
    (exec_start,) = service["ExecStart"]
    words = shlex.split(exec_start)
    what = _check_command(words, block.name)
    if "ExecReload" in service:
        # SIGHUP is a rolling restart only under the supervisor (--workers > 1).
        assert service["ExecReload"] == ["/bin/kill -HUP $MAINPID"], block.name
        assert what == "tidings serve", block.name
        reload_config = build_config(_serve_parser().parse_args(words[1:]))
        assert reload_config.workers > 1, f"{block.name}: SIGHUP stops a single process"
    stop_timeout = _seconds(service["TimeoutStopSec"][0])
    if what == "tidings serve":
        config = build_config(_serve_parser().parse_args(words[1:]))
        if config.workers > 1:
            assert service.get("KillMode") == ["mixed"], "SIGTERM must reach the supervisor alone"
        assert stop_timeout > config.timeouts.graceful + 1
        files = int(service["LimitNOFILE"][0])
        assert files > config.workers * config.limits.max_connections
    else:
        assert what == "manage.py runworker", f"{block.name}: {exec_start}"
        assert stop_timeout > DEFAULT_SHUTDOWN_TIMEOUT
    assert service.get("Restart") == ["on-failure"]


def test_socket_activated_unit_serves_and_keeps_connections_across_restarts() -> None:
    """Start the documented socket-activated ExecStart on a socket passed as fd 3, as systemd does.

    A request sent while the service is stopped waits in the backlog and is answered
    once it has started again.
    """
    (block,) = [b for b in _UNITS if "--fd 3" in b.text]
    (exec_start,) = _unit(block)["Service"]["ExecStart"]
    words = shlex.split(exec_start)
    app = next(w for w in words if re.fullmatch(r"[\w.]+:\w+", w))
    args = [a if a != app else "tests.server.apps:hello" for a in words[2:]]
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("DJANGO_SETTINGS_MODULE", None)

    def start() -> subprocess.Popen[bytes]:
        # What systemd does: the listening socket becomes the service's file descriptor 3.
        fd = listener.fileno()
        command = [sys.executable, "-m", "tidings", "serve", *args, "--no-access-log"]
        return subprocess.Popen(
            ["bash", "-c", f'exec "$@" 3<&{fd} {fd}<&-', "bash", *command],
            cwd=ROOT,
            env=env,
            pass_fds=(fd,),
            stderr=subprocess.DEVNULL,
        )

    def get(sock: socket.socket) -> bytes:
        sock.settimeout(15)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
        return data

    request = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    server = start()
    try:
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(request)
            assert get(sock).startswith(b"HTTP/1.1 200")
        server.send_signal(signal.SIGTERM)
        assert server.wait(15) == 0
        # Nothing serves the socket now: the kernel completes the connection and keeps it
        # in the listen backlog, with the request, until the next server accepts it.
        waiting = socket.create_connection(("127.0.0.1", port))
        waiting.sendall(request)
        server = start()
        with waiting:
            assert get(waiting).startswith(b"HTTP/1.1 200")
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
            server.wait(15)
        listener.close()


# -- links and figures ---------------------------------------------------------------------------


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[`*_]|\[|\]\([^)]*\)", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.DOTALL)
    return {_slug(m) for m in re.findall(r"^#{1,6} (.+)$", text, flags=re.MULTILINE)}


_MY_DOCS = [README] + [
    DOCS / name
    for name in ("index.md", "migration.md", "deployment.md", "topics.md", "reference.md")
]


@pytest.mark.parametrize("doc", _MY_DOCS, ids=[d.name for d in _MY_DOCS])
def test_relative_links_resolve(doc: Path) -> None:
    text = re.sub(r"```.*?```", "", doc.read_text(), flags=re.DOTALL)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue  # an absolute URL
        path_part, _, anchor = target.partition("#")
        path = (doc.parent / path_part).resolve() if path_part else doc
        assert path.exists(), f"{doc.name}: link to missing {target}"
        if anchor and path.suffix == ".md":
            assert anchor in _anchors(path), f"{doc.name}: no heading for {target}"


def _load_plot() -> Any:
    spec = importlib.util.spec_from_file_location("_bench_plot", ROOT / "benchmarks" / "_plot.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["_bench_plot"] = module
    spec.loader.exec_module(module)
    return module


# README performance rows -> (result file, panel title, panel unit)
_README_FIGURES = {
    "HTTP hello world, req/s": ("http_hello", "HTTP hello world", "requests/s"),
    "HTTP 64 KiB body, req/s": ("http_hello", "HTTP 64 KiB body", "requests/s"),
    "HTTP 1 MiB streamed, req/s": ("http_hello", "HTTP 1 MiB streamed", "requests/s"),
    "WebSocket echo, 100 conns, 32 B, msg/s": (
        "ws_echo",
        "WebSocket echo, 32 B, 100 conns",
        "messages/s",
    ),
    "WebSocket echo, 100 conns, 1 KiB, msg/s": (
        "ws_echo",
        "WebSocket echo, 1 KiB, 100 conns",
        "messages/s",
    ),
    "WebSocket idle memory, KiB per connection": (
        "ws_echo",
        "WebSocket idle memory",
        "KiB per connection",
    ),
    "consumer dispatch via communicator, msg/s": (
        "consumer_dispatch",
        "Consumer dispatch (communicator)",
        "messages/s",
    ),
    "in-memory `group_send` to 1,000 members, ms": (
        "consumer_dispatch",
        "In-memory group_send, 1,000 members",
        "ms per call",
    ),
    "broadcast to 1,000 WebSocket clients, 2 workers, Redis, ms to the last (p99)": (
        "ws_broadcast",
        "WebSocket broadcast to 1000 clients",
        "ms to last client (p99)",
    ),
    "same broadcast, server CPU per delivered message, µs": (
        "ws_broadcast",
        "WebSocket broadcast, server CPU",
        "µs per delivered message",
    ),
}


def test_readme_figures_are_the_measured_ones() -> None:
    """Each README figure is the JSON result as the chart shows it, with its command."""
    plot = _load_plot()
    panels, sources = plot.collect(ROOT / "benchmarks" / "results")
    by_key = {(p.source, p.title, p.unit): p for p in panels}
    section = README.read_text().split("## Performance", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("| ")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]
    assert {row[0] for row in rows} == set(_README_FIGURES)
    columns = {"Tidings": "tidings", "uvicorn": "uvicorn", "granian": "granian"}
    columns["Channels"] = "channels"
    for row in rows:
        source, title, unit = _README_FIGURES[row[0]]
        assert row[1] == f"`python benchmarks/{source}.py`", row[0]
        panel = by_key[(source, title, unit)]
        for name, cell in zip(header[2:], row[2:], strict=True):
            server = columns[name]
            if server in panel.values:
                assert cell == panel.label(panel.values[server]), f"{row[0]} / {name}"
            else:
                assert cell == "", f"{row[0]} / {name}"
    dates = {
        s.date[:10] for s in sources if s.benchmark in {v[0] for v in _README_FIGURES.values()}
    }
    assert all(f"Measured on {day}" in section for day in dates)


def test_chart_is_committed() -> None:
    png = DOCS / "benchmarks.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "(docs/benchmarks.png)" in README.read_text()
