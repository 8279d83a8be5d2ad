"""The Huffman code of HPACK (RFC 7541 section 5.2, appendix B): encode and decode.

Theory of operation
-------------------
The code is canonical, so the table below holds only each symbol's code length; the
codes, the code tree and the decoding state machine are derived from it at import.

Decoding is a state machine over whole octets: a state is an internal node of the
code tree (256 of them, numbered by the tree walk), times 256, and the transition of
state ``s`` on octet ``o`` has index ``s | o`` in two flat lists, ``_NEXT`` (the next
state) and ``_OUTPUT`` (the 0 to 2 symbols completed on the way). One list comprehension
walks a string with one subscript of each per octet. Rows are filled on first use,
the first time a string goes through their state: an octet-wide table of every state
would take half a second and a few MiB at import, and header text visits few states.
Filled entirely, by a client that tries, the lists and strings take about 1 MiB.

Encoding joins each octet's code as a string of ``0`` and ``1`` and parses the result
as one binary integer: two loops that run in C, linear in the length.

``decode`` raises ``ValueError``; ``hpack.py`` maps it to ``HpackError``.
"""

from __future__ import annotations

from typing import Final

__all__ = ["decode", "encode"]

# Appendix B: the code length of each symbol (256 is EOS). The code is canonical:
# codes of equal length are consecutive in symbol order, each length's first code
# follows the previous length's last, so the lengths determine the codes.
# fmt: off
_HUFFMAN_LENGTHS: Final = bytes((
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28,
    28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 28,
    6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6,
    5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10,
    13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6,
    15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5,
    6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28,
    20, 22, 20, 20, 22, 22, 22, 23, 22, 23, 23, 23, 23, 23, 24, 23,
    24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24,
    22, 21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23,
    21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23,
    26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25,
    19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27,
    20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23,
    26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26, 30,
))
# fmt: on
_EOS: Final = 256


def _canonical_codes() -> list[int]:
    """Each symbol's code, assigned from the lengths in canonical order."""
    codes = [0] * len(_HUFFMAN_LENGTHS)
    code = -1
    previous = 0
    for symbol in sorted(range(len(_HUFFMAN_LENGTHS)), key=lambda s: (_HUFFMAN_LENGTHS[s], s)):
        length = _HUFFMAN_LENGTHS[symbol]
        code = (code + 1) << (length - previous)
        previous = length
        codes[symbol] = code
    return codes


_CODES: Final = _canonical_codes()
#: Each octet's code as a string of "0" and "1": encoding joins them and parses the
#: result as one binary integer, two loops that run in C.
_CODE_BITS: Final = tuple(
    format(_CODES[s], f"0{_HUFFMAN_LENGTHS[s]}b") for s in range(len(_CODES) - 1)
)


def _code_tree() -> list[list[int]]:
    """The code tree: node 0 is the root; a child >= 1 is a node, ``~symbol`` a leaf."""
    children = [[0, 0]]
    for symbol, code in enumerate(_CODES):
        node = 0
        for shift in range(_HUFFMAN_LENGTHS[symbol] - 1, 0, -1):
            bit = (code >> shift) & 1
            if not children[node][bit]:
                children[node][bit] = len(children)
                children.append([0, 0])
            node = children[node][bit]
        children[node][code & 1] = ~symbol
    return children


_TREE: Final = _code_tree()


def _padding_states() -> frozenset[int]:
    """States in which a string may end: the root, or up to 7 one bits of EOS read."""
    nodes = [0]
    for _ in range(7):
        nodes.append(_TREE[nodes[-1]][1])
    return frozenset(node << 8 for node in nodes)


# The state machine in two flat lists. A state is a tree node times 256; the
# transition of state s on octet o has index s | o: _NEXT holds the next state,
# _OUTPUT the symbols completed (None until the row of s is filled, on first use).
# Index _START leads to the root. EOS leads to _BROKEN, whose indexes are past the
# lists: reading on from it is an IndexError.
_START: Final = 256 << 8
_BROKEN: Final = 257 << 8
_FINAL_STATES: Final = _padding_states()
_NEXT: Final[list[int]] = [0] * (_START + 1)
_OUTPUT: Final[list[bytes | None]] = [None] * (_START + 1)
# Shared by every transition: the states, and one copy of each symbol string.
_STATES: Final = tuple(node << 8 for node in range(256))
_SYMBOLS: dict[bytes, bytes] = {}


def _fill_row(state: int) -> None:
    """Compute the transitions of ``state`` for each octet, from the code tree."""
    for octet in range(256):
        node = state >> 8
        symbols = []
        for shift in range(7, -1, -1):
            node = _TREE[node][(octet >> shift) & 1]
            if node < 0:
                symbols.append(~node)
                node = 0
        text = b"" if _EOS in symbols else bytes(symbols)
        _NEXT[state | octet] = _BROKEN if _EOS in symbols else _STATES[node]
        _OUTPUT[state | octet] = _SYMBOLS.setdefault(text, text)


def _fill_rows(data: bytes) -> bool:
    """Fill the rows that decoding ``data`` goes through; whether any was empty."""
    filled = False
    state = 0
    for octet in data:
        if state == _BROKEN:
            break
        if _OUTPUT[state | octet] is None:
            _fill_row(state)
            filled = True
        state = _NEXT[state | octet]
    return filled


def decode(data: bytes) -> bytes:
    """Decode a Huffman-coded string (section 5.2).

    Raises:
        ValueError: the string contains EOS, or its padding is longer than 7 bits or
            not the most significant bits of EOS (all ones).
    """
    following = _NEXT
    output = _OUTPUT
    index = _START
    try:
        parts = [output[(index := following[index] | octet)] for octet in data]
        text = b"".join(parts)  # type: ignore[arg-type]
    except (IndexError, TypeError):  # EOS, or a row not filled yet: the path was wrong
        if _fill_rows(data):
            return decode(data)
        raise ValueError("Huffman string contains EOS") from None
    state = following[index]
    if state not in _FINAL_STATES:
        raise ValueError(
            "Huffman string contains EOS" if state == _BROKEN else "invalid Huffman padding"
        )
    return text


def encode(data: bytes) -> bytes:
    """Huffman-code ``data`` (section 5.2), padded with the most significant bits of EOS."""
    if not data:
        return b""
    bits = "".join([_CODE_BITS[octet] for octet in data])
    padding = -len(bits) % 8
    return int(bits + "1" * padding, 2).to_bytes((len(bits) + padding) >> 3, "big")
