"""RFC 7541 (HPACK): every representation accepted, every decoding error caught.

A decoding error in a field block is a connection error of type COMPRESSION_ERROR
(RFC 9113 §4.3). Blocks are built octet by octet; Huffman strings come from hpack's
own encoder (RFC 7541 Appendix B) or, for the invalid ones, from hand-written bits.
"""

from __future__ import annotations

from _cases_streams import open_probe
from _client import END_HEADERS, END_STREAM, HEADERS, Fail, Target, hpack_int, raw_frame
from _registry import case
from hpack.huffman import HuffmanEncoder
from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH

__all__: list[str] = []

_HUFFMAN = HuffmanEncoder(REQUEST_CODES, REQUEST_CODES_LENGTH)
STATIC_ENTRIES = 61  # RFC 7541 Appendix A
DEFAULT_TABLE_SIZE = 4096  # RFC 9113 §6.5.2, SETTINGS_HEADER_TABLE_SIZE's initial value


def _string(value: bytes, huffman: bool) -> bytes:
    """RFC 7541 §5.2: a string literal, Huffman-coded or raw."""
    if huffman:
        coded = _HUFFMAN.encode(value)
        return hpack_int(len(coded), 7, 0x80) + coded
    return hpack_int(len(value), 7) + value


def _base(t: Target) -> bytes:
    authority = f"{t.host}:{t.port}".encode()
    return b"\x82" + (b"\x87" if t.tls else b"\x86") + b"\x84" + b"\x01" + _string(authority, False)


def _request(t: Target, block: bytes) -> str:
    with open_probe(t) as p:
        p.send(raw_frame(HEADERS, END_STREAM | END_HEADERS, 1, block))
        status, _ = p.expect_response(1)
        if not status.startswith("2"):
            raise Fail(f"answered {status}, expected a 2xx")
        return f"answered {status}"


def _decoding_error(t: Target, block: bytes) -> str:
    with open_probe(t) as p:
        p.send(raw_frame(HEADERS, END_STREAM | END_HEADERS, 1, block))
        return p.expect_connection_error("COMPRESSION_ERROR")


# -- Accepted representations (RFC 7541 §6) ----------------------------------------

# (section, pattern, prefix bits, name): the literal forms of §6.2.
_LITERALS = [
    ("6.2.1", 0x40, 6, "with incremental indexing"),
    ("6.2.2", 0x00, 4, "without indexing"),
    ("6.2.3", 0x10, 4, "never indexed"),
]
USER_AGENT = 58  # static index of user-agent


def _literal_cases() -> None:
    for section, pattern, prefix, form in _LITERALS:
        for new_name in (False, True):
            for huffman in (False, True):
                _register_literal(section, pattern, prefix, form, new_name, huffman)


def _register_literal(
    section: str, pattern: int, prefix: int, form: str, new_name: bool, huffman: bool
) -> None:
    name_kind = "new name" if new_name else "indexed name"
    coding = ", Huffman-coded" if huffman else ""

    def run(t: Target) -> str:
        if new_name:
            field = bytes([pattern]) + _string(b"x-probe", huffman)
        else:
            field = hpack_int(USER_AGENT, prefix, pattern)
        return _request(t, _base(t) + field + _string(b"h2-probe", huffman))

    case(
        "hpack",
        section,
        f"Sends a literal field {form}, {name_kind}{coding}",
        "Every literal representation is decoded: the request is served.",
    )(run)


_literal_cases()


@case(
    "hpack",
    "6.1",
    "Sends a field indexed into the dynamic table by an earlier block",
    "An entry added with incremental indexing is found at index 62 by the next block.",
)
def dynamic_index(t: Target) -> str:
    with open_probe(t) as p:
        first = _base(t) + b"\x40" + _string(b"x-probe", False) + _string(b"1", False)
        p.send(raw_frame(HEADERS, END_STREAM | END_HEADERS, 1, first))
        p.expect_response(1)
        second = _base(t) + hpack_int(STATIC_ENTRIES + 1, 7, 0x80)
        p.send(raw_frame(HEADERS, END_STREAM | END_HEADERS, 3, second))
        status, _ = p.expect_response(3)
        return f"answered {status}"


@case(
    "hpack",
    "6.3",
    "Sends a dynamic table size update to 0, then to 4096, at a block's start",
    "Size updates at the start of a block, within the limit, are accepted.",
)
def size_updates_ok(t: Target) -> str:
    return _request(t, hpack_int(0, 5, 0x20) + hpack_int(DEFAULT_TABLE_SIZE, 5, 0x20) + _base(t))


# -- Decoding errors -----------------------------------------------------------------


@case(
    "hpack",
    "2.3.3",
    "Sends an indexed field beyond the static and dynamic tables",
    "An index past both tables is a decoding error (COMPRESSION_ERROR).",
)
def index_out_of_range(t: Target) -> str:
    return _decoding_error(t, _base(t) + hpack_int(STATIC_ENTRIES + 10, 7, 0x80))


@case(
    "hpack",
    "2.3.3",
    "Sends a literal field whose name index is beyond both tables",
    "An invalid name index is a decoding error (COMPRESSION_ERROR).",
)
def name_index_out_of_range(t: Target) -> str:
    field = hpack_int(STATIC_ENTRIES + 10, 6, 0x40) + _string(b"x", False)
    return _decoding_error(t, _base(t) + field)


@case(
    "hpack",
    "4.2",
    "Sends a dynamic table size update at the end of a block",
    "A size update is only allowed at the start of a block: a decoding error.",
)
def size_update_at_end(t: Target) -> str:
    return _decoding_error(t, _base(t) + hpack_int(0, 5, 0x20))


@case(
    "hpack",
    "5.1",
    "Sends an integer encoded on 12 continuation octets",
    "An integer over the decoder's limits is a decoding error, not an overflow.",
)
def integer_overflow(t: Target) -> str:
    length = b"\x7f" + b"\xff" * 11 + b"\x01"  # a string length of about 2^84
    return _decoding_error(t, _base(t) + b"\x00" + length + b"x")


@case(
    "hpack",
    "5.2",
    "Sends a Huffman string padded with more than 7 bits",
    "Padding longer than 7 bits is a decoding error.",
)
def huffman_long_padding(t: Target) -> str:
    # 'a' is 00011 (5 bits); 11 one-bits of padding follow.
    return _decoding_error(t, _base(t) + b"\x00" + _string(b"x-a", False) + b"\x82\x1f\xff")


@case(
    "hpack",
    "5.2",
    "Sends a Huffman string padded with zero bits",
    "Padding that is not the most significant bits of EOS (all ones) is a decoding error.",
)
def huffman_zero_padding(t: Target) -> str:
    return _decoding_error(t, _base(t) + b"\x00" + _string(b"x-a", False) + b"\x81\x18")


@case(
    "hpack",
    "5.2",
    "Sends a Huffman string containing the EOS symbol",
    "A Huffman string that contains EOS is a decoding error.",
)
def huffman_eos(t: Target) -> str:
    # EOS is 30 one-bits; two more one-bits pad the string to 4 octets.
    return _decoding_error(t, _base(t) + b"\x00" + _string(b"x-a", False) + b"\x84\xff\xff\xff\xff")


@case(
    "hpack",
    "6.1",
    "Sends an indexed field with index 0",
    "Index 0 is not used: it is a decoding error.",
)
def index_zero(t: Target) -> str:
    return _decoding_error(t, _base(t) + b"\x80")


@case(
    "hpack",
    "6.3",
    "Sends a size update above the server's SETTINGS_HEADER_TABLE_SIZE",
    "A dynamic table size over the decoder's advertised maximum is a decoding error.",
)
def size_update_too_big(t: Target) -> str:
    with open_probe(t) as p:
        limit = p.server_settings.get(0x1, DEFAULT_TABLE_SIZE)
        block = hpack_int(limit + 1, 5, 0x20) + _base(t)
        p.send(raw_frame(HEADERS, END_STREAM | END_HEADERS, 1, block))
        return p.expect_connection_error("COMPRESSION_ERROR")
