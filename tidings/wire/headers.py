"""Header fields an application hands the server: the checks before they reach the wire.

Theory of operation
-------------------
A response's header block is written from what the application sent. A field
name that is not a token (``x a``, ``x:y``, an empty name) or a value with CR,
LF or NUL would let the application, or whoever controls the data it copies into
a header, split or forge the response (RFC 9110 section 5.5: such a value MUST
be rejected or have the characters replaced; we reject). Two different
``Content-Length`` values make the message length ambiguous to every hop after
us (RFC 9110 section 8.6, RFC 9112 section 6.3 item 5), the classic request
smuggling ingredient; repeated identical values are allowed and mean one.

``check_fields`` makes every check in one pass and returns the declared length,
so the server's hot path pays one Python loop per response and no regex: a name
is a token when deleting every token character (``bytes.translate``) leaves
nothing, and names found valid are remembered (a bounded set), so the usual
ones cost a set lookup. Nothing here writes bytes or knows about ASGI messages.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

__all__ = ["TCHAR", "InvalidField", "check_fields", "is_token"]

#: ``tchar`` of RFC 9110 section 5.6.2: the characters of a token (a field name).
TCHAR: Final = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


# Names already found to be tokens. Applications send the same few names over and
# over: a set lookup is several times cheaper than checking the characters. Bounded,
# so names an application copies from requests can't grow it without limit.
_KNOWN_NAMES: set[bytes] = set()
_KNOWN_NAMES_MAX: Final = 1024


class InvalidField(ValueError):
    """A header field the server must not send; the message says which and why."""


def is_token(name: bytes) -> bool:
    """Whether ``name`` is a token (RFC 9110 section 5.6.2): one or more ``tchar``."""
    return bool(name) and not name.translate(None, TCHAR)


def check_fields(fields: Iterable[tuple[bytes, bytes]]) -> int:
    """Check response header fields; return the ``Content-Length`` they declare, or -1.

    Args:
        fields: ``(name, value)`` pairs as an ASGI application sends them.

    Raises:
        InvalidField: a name is not a token; a value contains CR, LF or NUL; a
            ``Content-Length`` value is not a string of digits (RFC 9110 section
            8.6), or two of them differ.
    """
    length = -1
    known = _KNOWN_NAMES
    for name, value in fields:
        if name not in known:
            if not name or name.translate(None, TCHAR):
                raise InvalidField(f"invalid header name {name!r}")
            if len(known) < _KNOWN_NAMES_MAX:
                known.add(name)
        # Byte membership is a memchr; a one-byte bytes needle costs ten times more.
        if 13 in value or 10 in value or 0 in value:
            raise InvalidField(f"header {name!r} value contains CR, LF or NUL")
        if len(name) == 14 and name.lower() == b"content-length":
            # isdigit() on bytes is ASCII only: no sign, space, underscore or other
            # script's digits, all of which int() would take.
            if not value.isdigit():
                raise InvalidField(f"invalid Content-Length {value!r}")
            declared = int(value)
            if length >= 0 and declared != length:
                raise InvalidField("conflicting Content-Length values")
            length = declared
    return length
