#!/usr/bin/env python3
"""Run Django Channels' own test suite, unmodified, against the installed Tidings.

Usage::

    python compliance/channels/run.py [SUITE] [-- PYTEST ARGS]

``SUITE`` is a Channels checkout (or the copy in ``../shared/compat/channels-4.3``,
the default): a folder holding ``tests/`` and ``setup.cfg``.

What it does:

1. Builds ``compliance/channels/.venv`` (once; again when ``pyproject.toml`` changes)
   with Tidings installed in editable mode and the suite's test extras (pytest,
   pytest-django, pytest-asyncio, async-timeout, selenium). Kept apart from the
   project's ``.venv`` so that pytest-django never loads into Tidings' own suite.
2. Copies ``tests/`` and ``setup.cfg`` (its ``[tool:pytest]`` settings) to a temporary
   folder; the suite's files are never edited.
3. Runs pytest there with the plugin ``_tidings_compat.py`` (beside this file): it
   installs ``tidings.alias`` so that ``channels`` and ``channels.X`` *are* ``tidings``
   and ``tidings.X``, raising where ``tidings.X`` does not exist (never a fallback to a
   real Channels, which the alias refuses to shadow), and asserts at the end that every
   ``channels`` module the suite imported came from Tidings.
   The suite's settings list ``"daphne"`` in ``INSTALLED_APPS``; Tidings replaces
   Daphne, so ``stubs/daphne`` is an empty app of that name (no Daphne code runs).
4. Chromium for the Selenium tests of ``ChannelsLiveServerTestCase`` needs
   ``--no-sandbox`` as root, which the suite's mixin does not pass. Debian's launcher
   sources ``/etc/chromium.d/*``: as root the runner adds a file there that adds the
   flag only when ``TIDINGS_CHROMIUM_NO_SANDBOX`` is set in the environment (so other
   Chromium users are untouched), sets it for the run, and removes the file after.
   The hook only works when chromedriver starts that launcher: left alone it starts
   ``/usr/lib/chromium/chromium`` itself. The suite's ``webdriver.Chrome()`` asks
   Selenium Manager for the browser, so the run sets ``SE_BROWSER_PATH`` to the
   launcher on ``PATH`` (``chromium``), and ``SE_OFFLINE``/``SE_AVOID_STATS`` so that
   it uses the installed chromedriver and makes no network request (it would try to
   download Chrome for Testing and send usage statistics); its cache goes in the
   temporary folder, not in ``~/.cache/selenium``.

The plugin's ``SKIPS`` names the tests not run, each with its reason (at most 3, each an intended,
documented difference: see docs/migration.md). The exit status is pytest's; a summary
line ``channels-suite: N passed, N failed`` is printed last.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
VENV = HERE / ".venv"
DEFAULT_SUITE = ROOT.parent / "shared" / "compat" / "channels-4.3"
#: The suite's ``tests`` extra, less ``coverage`` (unused) and Channels itself.
TEST_EXTRAS = [
    "pytest>=8",
    "pytest-django>=4.8",
    "pytest-asyncio>=0.23",
    "async-timeout>=4",
    "selenium>=4.20",
]

CHROMIUM_HOOK = Path("/etc/chromium.d/zz-tidings-no-sandbox")
CHROMIUM_HOOK_TEXT = (
    "# Added by tidings compliance/channels/run.py for the duration of a run.\n"
    'if [ -n "$TIDINGS_CHROMIUM_NO_SANDBOX" ]; then\n'
    '  export CHROMIUM_FLAGS="$CHROMIUM_FLAGS --no-sandbox"\n'
    "fi\n"
)


def _run(cmd: list[str], **kwargs: object) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, **kwargs)  # type: ignore[call-overload]


def ensure_venv() -> Path:
    """The runner's venv with Tidings (editable) and the suite's test extras."""
    python = VENV / "bin" / "python"
    want = hashlib.sha256(
        (ROOT / "pyproject.toml").read_bytes() + "\n".join(TEST_EXTRAS).encode()
    ).hexdigest()[:16]
    stamp = VENV / ".stamp"
    if python.exists() and stamp.exists() and stamp.read_text().strip() == want:
        return python
    if not python.exists():
        _run([sys.executable, "-m", "venv", str(VENV)])
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    _run([*pip, "--upgrade", "pip"])
    _run([*pip, "-e", str(ROOT), *TEST_EXTRAS])
    stamp.write_text(want + "\n")
    return python


def _chromium_hook() -> bool:
    """Install the no-sandbox launcher hook when root; return whether we added it."""
    if os.geteuid() != 0 or not CHROMIUM_HOOK.parent.is_dir() or CHROMIUM_HOOK.exists():
        return False
    CHROMIUM_HOOK.write_text(CHROMIUM_HOOK_TEXT)
    return True


def _selenium_env(work: Path) -> dict[str, str]:
    """Selenium Manager settings: the system's Chromium launcher and chromedriver, offline."""
    env = {"SE_OFFLINE": "true", "SE_AVOID_STATS": "true", "SE_CACHE_PATH": str(work / ".selenium")}
    launcher = shutil.which("chromium")
    if launcher:
        env["SE_BROWSER_PATH"] = launcher
    return env


def main(argv: list[str]) -> int:
    extra: list[str] = []
    if "--" in argv:
        extra = argv[argv.index("--") + 1 :]
        argv = argv[: argv.index("--")]
    suite = Path(argv[0]) if argv else DEFAULT_SUITE
    if not (suite / "tests").is_dir():
        print(f"error: {suite} has no tests/ folder (a Channels checkout?)", file=sys.stderr)
        return 2
    python = ensure_venv()
    added_hook = _chromium_hook()
    try:
        with tempfile.TemporaryDirectory(prefix="tidings-channels-suite-") as tmp:
            work = Path(tmp)
            shutil.copytree(suite / "tests", work / "tests")
            if (suite / "setup.cfg").exists():
                shutil.copy(suite / "setup.cfg", work / "setup.cfg")
            env = {k: v for k, v in os.environ.items() if k not in ("DJANGO_SETTINGS_MODULE",)}
            # The suite's root, this folder (the plugin) and the Daphne stub.
            env["PYTHONPATH"] = os.pathsep.join([str(work), str(HERE), str(HERE / "stubs")])
            env["TIDINGS_CHROMIUM_NO_SANDBOX"] = "1"
            env.update(_selenium_env(work))
            cmd = [str(python), "-m", "pytest", "-p", "_tidings_compat", "-p", "no:cacheprovider"]
            cmd += ["-rfEs", *extra]
            print("+", " ".join(cmd), flush=True)
            proc = subprocess.run(
                cmd, cwd=work, env=env, capture_output=True, text=True, check=False
            )
            sys.stdout.write(proc.stdout)
            sys.stderr.write(proc.stderr)
            counts = {
                word: int(n)
                for n, word in re.findall(
                    r"(\d+) (passed|failed|errors?|skipped)",
                    proc.stdout.splitlines()[-1] if proc.stdout else "",
                )
            }
            errors = counts.get("error", 0) + counts.get("errors", 0)
            print(
                f"channels-suite: {counts.get('passed', 0)} passed, "
                f"{counts.get('failed', 0) + errors} failed, {counts.get('skipped', 0)} skipped"
            )
            return proc.returncode
    finally:
        if added_hook:
            CHROMIUM_HOOK.unlink(missing_ok=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
