"""HTTP/2 conformance probe: RFC 9113, RFC 7541 (HPACK) and RFC 8441 over raw frames.

Each case opens its own connection to a running server, sends frames (often invalid on
purpose) and checks the one rule it names, with a deadline per wait, so a server that
stays silent fails that case and the run goes on. Serve ``app.py`` from this directory
(any ASGI server) and run:

    python compliance/h2/run.py --port 8000 [--host 127.0.0.1] [--tls]
                                [--section 6.5] [--timeout 1] [--json results.json]

One line per case (PASS, FAIL or SKIP, with the reason), then the tally
``h2-probe: N passed, N failed, N skipped``. The exit status is 1 if any case failed,
2 if the server could not be reached at all. ``--section`` keeps the cases of a
section and its subsections (``6.5`` runs 6.5, 6.5.2 and 6.5.3; ``hpack`` or
``hpack/5.2`` select by specification). ``--list`` prints the cases without running.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _cases_frames  # noqa: F401 (registers cases)
import _cases_hpack  # noqa: F401
import _cases_http  # noqa: F401
import _cases_rfc8441  # noqa: F401
import _cases_streams  # noqa: F401
from _client import Fail, Skip, Target
from _registry import CASES, Case

__all__ = ["main", "run_case", "selected"]

SPEC_ORDER = {"http2": 0, "hpack": 1, "rfc8441": 2}


def _section_key(c: Case) -> tuple[int, tuple[int, ...], int]:
    return SPEC_ORDER[c.spec], tuple(int(n) for n in c.section.split(".")), c.number


def selected(sections: list[str]) -> list[Case]:
    """The cases under any of ``sections`` ("6.5", "hpack", "hpack/5.2"), in RFC order."""
    cases = sorted(CASES, key=_section_key)
    if not sections:
        return cases

    def matches(c: Case, want: str) -> bool:
        spec, _, section = want.rpartition("/") if "/" in want else ("", "", want)
        if want in SPEC_ORDER:
            return c.spec == want
        if spec and c.spec != spec:
            return False
        if not spec and c.spec != "http2":
            return False
        return c.section == section or c.section.startswith(section + ".")

    return [c for c in cases if any(matches(c, w) for w in sections)]


def run_case(c: Case, target: Target) -> tuple[str, str]:
    """Run one case: ("PASS" | "FAIL" | "SKIP", what happened)."""
    try:
        return "PASS", c.run(target)
    except Skip as exc:
        return "SKIP", str(exc)
    except Fail as exc:
        return "FAIL", str(exc)
    except Exception as exc:  # a socket error or a frame the probe could not parse
        return "FAIL", f"{type(exc).__name__}: {exc}"


def _reachable(target: Target) -> str | None:
    try:
        with socket.create_connection((target.host, target.port), timeout=3):
            return None
    except OSError as exc:
        return f"cannot connect to {target.host}:{target.port}: {exc}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--tls", action="store_true", help="TLS with ALPN h2 (no cert check)")
    parser.add_argument("--section", action="append", default=[], help="repeatable")
    parser.add_argument("--timeout", type=float, default=1.0, help="seconds per wait")
    parser.add_argument("--path", default="/", help="the request path the cases use")
    parser.add_argument("--json", type=Path, help="write the results to this file")
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    args = parser.parse_args(argv)
    cases = selected(args.section)
    if not cases:
        parser.error(f"no case in section {', '.join(args.section)}")
    if args.list:
        for c in cases:
            print(f"{c.id:22} {c.title}\n{'':22} {c.rule}")
        return 0
    if not 0 < args.port < 65536:
        parser.error("--port is required (the port the server under test listens on)")
    target = Target(args.host, args.port, args.tls, args.timeout, args.path)
    problem = _reachable(target)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    results = []
    tally = {"PASS": 0, "FAIL": 0, "SKIP": 0}
    started = time.monotonic()
    for c in cases:
        verdict, note = run_case(c, target)
        tally[verdict] += 1
        print(f"{verdict} {c.id:16} {c.title}: {note}", flush=True)
        if verdict == "FAIL":
            print(f"     {'':16} rule: {c.rule}", flush=True)
        results.append(
            {
                "id": c.id,
                "spec": c.spec,
                "section": c.section,
                "title": c.title,
                "rule": c.rule,
                "verdict": verdict,
                "note": note,
            }
        )
    seconds = time.monotonic() - started
    line = f"h2-probe: {tally['PASS']} passed, {tally['FAIL']} failed, {tally['SKIP']} skipped"
    print(f"{line} ({seconds:.1f} s, {'TLS' if args.tls else 'h2c'} {args.host}:{args.port})")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "target": f"{args.host}:{args.port}",
                    "tls": args.tls,
                    "passed": tally["PASS"],
                    "failed": tally["FAIL"],
                    "skipped": tally["SKIP"],
                    "cases": results,
                },
                indent=2,
            )
            + "\n"
        )
    return 1 if tally["FAIL"] else 0


if __name__ == "__main__":
    sys.exit(main())
