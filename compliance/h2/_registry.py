"""The case list: each case names its RFC section and states its rule in one line.

A case is a function of a ``Target`` registered with ``@case(spec, section, title, rule)``.
It opens its own connection, returns a short note when the server follows the rule,
and raises ``Fail`` or ``Skip`` otherwise. Case modules register in import order, which
is the order the runner prints them in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from _client import Target

__all__ = ["CASES", "Case", "case"]

CaseFn = Callable[[Target], str]


@dataclass(frozen=True)
class Case:
    """One MUST of RFC 9113, RFC 7541 or RFC 8441, and the function that checks it."""

    spec: str  # "http2" (RFC 9113), "hpack" (RFC 7541) or "rfc8441"
    section: str
    number: int  # its rank within the section, from 1
    title: str  # what the probe sends
    rule: str  # what the server must do, in one line
    run: CaseFn

    @property
    def id(self) -> str:
        return f"{self.spec}/{self.section}/{self.number}"


CASES: list[Case] = []


def case(spec: str, section: str, title: str, rule: str) -> Callable[[CaseFn], CaseFn]:
    """Register the decorated function as the next case of ``spec`` ``section``."""

    def register(fn: CaseFn) -> CaseFn:
        number = 1 + sum(1 for c in CASES if c.spec == spec and c.section == section)
        CASES.append(Case(spec, section, number, title, rule, fn))
        return fn

    return register
