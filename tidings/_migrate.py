"""``tidings migrate-imports``: rewrite a Channels project's imports and settings for Tidings.

Theory of operation
-------------------
Each Python file of the project is parsed (``ast``) and tokenized
(``tokenize``); the rewrite is a list of edits at token positions, applied to
the original text, so that formatting, comments and everything else stay as
they were. What changes:

- import statements of ``channels`` and its submodules (``import channels.db``,
  ``from channels.layers import get_channel_layer``) name ``tidings`` instead,
  and ``from channels_redis.core import ...`` becomes
  ``from tidings.layers.redis import ...``;
- after ``import channels...``, the uses of the name ``channels``
  (``channels.layers.get_channel_layer()``), unless the module also binds the
  name otherwise (then they are left alone and a note says so);
- string literals that are exactly a dotted path into Channels
  (``"channels.layers.InMemoryChannelLayer"``) or a channels_redis layer
  (``"channels_redis.core.RedisChannelLayer"``): the setting values;
- a module-level ``INSTALLED_APPS`` list or tuple: ``"channels"`` and
  ``"daphne"`` give way to one ``"tidings"``, placed before
  ``"django.contrib.staticfiles"``.

Nothing else is touched: a variable named ``channels``, the word in a comment
or a docstring, relative imports (``from .channels import x``: the project's own
module). The walk skips what is not the project's own code: hidden
directories (``.git``, ``.venv``...), ``venv``, ``site-packages``,
``node_modules``, ``__pycache__`` and any directory holding a virtual
environment (``pyvenv.cfg``). Without ``--write`` nothing is written: the
command prints the unified diff it would apply.
"""

from __future__ import annotations

import ast
import difflib
import io
import os
import re
import sys
import tokenize
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tidings.layers._manager import BACKEND_ALIASES

__all__ = ["SKIPPED_DIRECTORIES", "Rewrite", "migrate_main", "project_files", "rewrite_source"]

SKIPPED_DIRECTORIES = frozenset(
    {"venv", "env", "site-packages", "dist-packages", "node_modules", "__pycache__"}
)

# Dotted paths whose owner has a Tidings name other than the prefix rewrite.
_MODULES = {"channels_redis.core": "tidings.layers.redis"}
_CHANNELS_PATH = re.compile(r"channels(\.[A-Za-z_]\w*)+")
_APPS_REPLACED = {
    "channels",
    "daphne",
    "channels.apps.ChannelsConfig",
    "daphne.apps.DaphneConfig",
}
_STATICFILES = "django.contrib.staticfiles"


@dataclass
class Rewrite:
    """The rewritten text of one file, and notes for the person migrating."""

    text: str
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Edit:
    start: int  # character offsets in the source
    end: int
    text: str


class _Source:
    """A source text with its tokens and a (line, column) to offset map."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.lines = io.StringIO(text).readlines()  # the lines tokenize counts
        self.starts = [0]
        for line in self.lines:
            self.starts.append(self.starts[-1] + len(line))
        self.tokens = list(tokenize.generate_tokens(io.StringIO(text).readline))
        self._token_index = {self.offset(*t.start): i for i, t in enumerate(self.tokens)}

    def offset(self, line: int, column: int) -> int:
        """The offset of a tokenize position (1-based line, character column)."""
        return self.starts[line - 1] + column

    def ast_offset(self, line: int, byte_column: int) -> int:
        """The offset of an ``ast`` position (its columns count UTF-8 bytes)."""
        prefix = self.lines[line - 1].encode()[:byte_column].decode()
        return self.starts[line - 1] + len(prefix)

    def token_at(self, offset: int) -> int:
        """The index of the token that starts at ``offset``."""
        return self._token_index[offset]


def _dotted_at(source: _Source, index: int) -> tuple[str, int, int]:
    """The dotted name starting at token ``index``: ``(name, start, end)`` offsets."""
    tokens = source.tokens
    parts = [tokens[index].string]
    end_token = index
    while (
        end_token + 2 < len(tokens)
        and tokens[end_token + 1].string == "."
        and tokens[end_token + 2].type == tokenize.NAME
    ):
        parts.append(tokens[end_token + 2].string)
        end_token += 2
    start = source.offset(*tokens[index].start)
    return ".".join(parts), start, source.offset(*tokens[end_token].end)


def _renamed_module(name: str) -> str | None:
    for old, new in _MODULES.items():
        if name == old or name.startswith(old + "."):
            return new + name[len(old) :]
    if name == "channels" or name.startswith("channels."):
        return "tidings" + name[len("channels") :]
    return None


def _import_edits(source: _Source, tree: ast.Module) -> tuple[list[_Edit], bool]:
    """Edits of import statements; also whether ``import channels[.x]`` binds ``channels``."""
    edits: list[_Edit] = []
    binds_channels = False
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level or node.module is None or _renamed_module(node.module) is None:
                continue
            index = source.token_at(source.ast_offset(node.lineno, node.col_offset)) + 1
            name, start, end = _dotted_at(source, index)
            renamed = _renamed_module(name)
            if renamed is not None:
                edits.append(_Edit(start, end, renamed))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                renamed = _renamed_module(alias.name)
                if renamed is None or not renamed.startswith("tidings"):
                    continue
                if alias.name.split(".")[0] != "channels":
                    continue  # ``import channels_redis.core``: its uses would need more
                if alias.asname is None:
                    binds_channels = True
                first = source.token_at(source.ast_offset(alias.lineno, alias.col_offset))
                name, start, end = _dotted_at(source, first)
                edits.append(_Edit(start, end, "tidings" + name[len("channels") :]))
    return edits, binds_channels


def _other_bindings(tree: ast.Module) -> bool:
    """Whether the module binds the name ``channels`` other than by ``import channels...``."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id == "channels":
            if not isinstance(node.ctx, ast.Load):
                return True
        elif isinstance(node, ast.arg) and node.arg == "channels":
            return True
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            if node.name == "channels":
                return True
        elif isinstance(node, ast.Import | ast.ImportFrom):
            for alias in node.names:
                bound = alias.asname or (alias.name if isinstance(node, ast.ImportFrom) else None)
                if bound == "channels":
                    return True
        elif isinstance(node, ast.Global | ast.Nonlocal) and "channels" in node.names:
            return True
    return False


def _name_edits(source: _Source, tree: ast.Module) -> list[_Edit]:
    edits = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id == "channels":
            start = source.ast_offset(node.lineno, node.col_offset)
            edits.append(_Edit(start, start + len("channels"), "tidings"))
    return edits


def _string_value(token: tokenize.TokenInfo) -> str | None:
    """The value of a plain string literal token (not bytes, not an f-string)."""
    prefix = token.string[: len(token.string) - len(token.string.lstrip("rRuUbBfF"))]
    if set(prefix.lower()) & {"b", "f"}:
        return None
    try:
        value = ast.literal_eval(token.string)
    except (SyntaxError, ValueError):
        return None
    return value if isinstance(value, str) else None


def _requote(token: tokenize.TokenInfo, value: str) -> str:
    """``value`` as a literal with the quotes and prefix of ``token``."""
    body_start = len(token.string) - len(token.string.lstrip("rRuU"))
    quote = token.string[body_start]
    if token.string[body_start : body_start + 3] == quote * 3:
        quote *= 3
    return token.string[:body_start] + quote + value + quote


def _renamed_string(value: str) -> str | None:
    if value in BACKEND_ALIASES:  # the BACKEND paths the layer settings also accept
        return BACKEND_ALIASES[value]
    if _CHANNELS_PATH.fullmatch(value):
        return "tidings" + value[len("channels") :]
    return None


def _string_edits(source: _Source) -> list[_Edit]:
    edits = []
    for token in source.tokens:
        if token.type != tokenize.STRING:
            continue
        value = _string_value(token)
        renamed = _renamed_string(value) if value is not None else None
        if renamed is not None:
            start = source.offset(*token.start)
            edits.append(_Edit(start, source.offset(*token.end), _requote(token, renamed)))
    return edits


def _installed_apps_lists(tree: ast.Module) -> list[list[ast.expr]]:
    """The items of each module-level ``INSTALLED_APPS = [...]`` (or tuple) that has any."""
    found = []
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "INSTALLED_APPS" for t in node.targets)
            and isinstance(node.value, ast.List | ast.Tuple)
            and node.value.elts
        ):
            found.append(node.value.elts)
    return found


def _apps_plan(items: list[ast.expr]) -> tuple[list[int], int] | None:
    """Which items go (``"channels"``, ``"daphne"``, extra ``"tidings"``) and where ours is.

    Returns ``(gone, place)``: the indexes of the items to drop or replace, and the index
    ``"tidings"`` must take (before staticfiles); None when the list is right already.
    """
    values = [e.value if isinstance(e, ast.Constant) else None for e in items]
    replaced = [i for i, v in enumerate(values) if v in _APPS_REPLACED]
    ours = [i for i, v in enumerate(values) if v == "tidings"]
    static = values.index(_STATICFILES) if _STATICFILES in values else len(values)
    if not replaced and len(ours) <= 1 and (not ours or ours[0] < static):
        return None  # nothing to replace, and "tidings" (if there) is in its place
    gone = sorted(replaced + ours)
    return gone, min(gone[0], static)


def _installed_apps_edits(source: _Source, tree: ast.Module) -> list[_Edit]:
    """One ``"tidings"`` in place of ``"channels"`` and ``"daphne"``, before staticfiles."""
    edits: list[_Edit] = []
    for items in _installed_apps_lists(tree):
        plan = _apps_plan(items)
        if plan is not None:
            edits += _apps_edits(source, items, *plan)
    return edits


def _apps_edits(source: _Source, items: list[ast.expr], gone: list[int], place: int) -> list[_Edit]:
    """The text edits that carry out ``_apps_plan`` on one list."""
    edits: list[_Edit] = []
    spans = [
        (
            source.ast_offset(e.lineno, e.col_offset),
            source.ast_offset(e.end_lineno or e.lineno, e.end_col_offset or 0),
        )
        for e in items
    ]
    tidings = _requote(source.tokens[source.token_at(spans[gone[0]][0])], "tidings")
    deleted = [i for i in gone if i != place]
    # A run of deleted items at the end goes with the comma before it.
    tail = len(items)
    while tail - 1 in deleted:
        tail -= 1
    for i in deleted:
        if i < tail:
            edits.append(_Edit(spans[i][0], spans[i + 1][0], ""))
    if tail < len(items):
        edits.append(_Edit(spans[tail - 1][1], spans[-1][1], ""))
    if place in gone:
        edits.append(_Edit(*spans[place], tidings))
    else:
        start = spans[place][0]
        line_start = source.text.rfind("\n", 0, start) + 1
        indent = source.text[line_start:start]
        separator = "\n" + indent if not indent.strip() else " "
        edits.append(_Edit(start, start, tidings + "," + separator))
    return edits


def rewrite_source(text: str, *, path: str = "<string>") -> Rewrite:
    """Rewrite one module's Channels imports and settings for Tidings.

    Raises:
        SyntaxError: the text is not valid Python.
    """
    tree = ast.parse(text, filename=path)
    source = _Source(text)
    imports, binds_channels = _import_edits(source, tree)
    notes = []
    names: list[_Edit] = []
    if binds_channels:
        if _other_bindings(tree):
            notes.append(
                f"{path}: the name 'channels' is also bound otherwise; "
                "its uses (channels.x) were left as they are: check them"
            )
        else:
            names = _name_edits(source, tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level:
            modules = [node.module or ""]
        else:
            continue
        for module in modules:
            if module.split(".")[0] == "channels_redis" and _renamed_module(module) is None:
                notes.append(
                    f"{path}:{node.lineno}: {module} has no Tidings module of its own: "
                    "use tidings.layers.redis (see docs/migration.md)"
                )
    # In order of precedence: an edit overlapping one already taken is dropped (the
    # string "channels" inside INSTALLED_APPS is the list's business, not a path).
    taken: list[_Edit] = []
    for edit in [*_installed_apps_edits(source, tree), *imports, *names, *_string_edits(source)]:
        if all(edit.end <= other.start or edit.start >= other.end for other in taken):
            taken.append(edit)
    result = text
    for edit in sorted(taken, key=lambda e: (e.start, e.end), reverse=True):
        result = result[: edit.start] + edit.text + result[edit.end :]
    return Rewrite(result, notes)


def _is_environment(directory: Path) -> bool:
    return (directory / "pyvenv.cfg").exists()


def project_files(root: Path) -> Iterator[Path]:
    """The project's own ``.py`` files under ``root`` (a file is itself), sorted."""
    if root.is_file():
        yield root
        return
    for directory, subdirectories, files in os.walk(root):
        here = Path(directory)
        subdirectories[:] = sorted(
            name
            for name in subdirectories
            if not name.startswith(".")
            and name not in SKIPPED_DIRECTORIES
            and not _is_environment(here / name)
        )
        for name in sorted(files):
            if name.endswith(".py"):
                yield here / name


def _read(path: Path) -> tuple[str, str]:
    """The text of a Python file (in its declared encoding, newlines as they are)."""
    with path.open("rb") as raw:
        encoding, _ = tokenize.detect_encoding(raw.readline)
    with path.open(encoding=encoding, newline="") as file:
        return file.read(), encoding


def migrate_main(paths: Sequence[str], *, write: bool) -> int:
    """Run ``tidings migrate-imports``; return the exit status.

    Prints the unified diff of every file that changes (dry run) or writes the
    files (``write``). Exit status 1 if a file could not be read or parsed.
    """
    status = 0
    changed = 0
    for root in paths or ["."]:
        if not Path(root).exists():
            print(f"tidings: error: {root}: no such file or directory", file=sys.stderr)
            return 2
        for path in project_files(Path(root)):
            try:
                text, encoding = _read(path)
                rewrite = rewrite_source(text, path=str(path))
            except (SyntaxError, UnicodeDecodeError, ValueError) as exc:
                print(f"{path}: skipped, cannot parse it: {exc}", file=sys.stderr)
                status = 1
                continue
            for note in rewrite.notes:
                print(note, file=sys.stderr)
            if rewrite.text == text:
                continue
            changed += 1
            if write:
                with path.open("w", encoding=encoding, newline="") as file:
                    file.write(rewrite.text)
                print(f"rewrote {path}", file=sys.stderr)
            else:
                sys.stdout.writelines(
                    difflib.unified_diff(
                        text.splitlines(keepends=True),
                        rewrite.text.splitlines(keepends=True),
                        f"a/{path}",
                        f"b/{path}",
                    )
                )
    if write:
        print(f"{changed} file(s) rewritten", file=sys.stderr)
    else:
        print(f"{changed} file(s) would change; --write applies the diff", file=sys.stderr)
    return status
