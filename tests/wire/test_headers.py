"""tidings.wire.headers: the checks on header fields an application sends."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidings.wire import headers
from tidings.wire.headers import TCHAR, InvalidField, check_fields, is_token

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def test_tchar_is_rfc_9110_tchar() -> None:
    expected = {c for c in range(256) if _TOKEN.fullmatch(bytes([c]))}
    assert set(TCHAR) == expected
    assert len(TCHAR) == len(expected)


def test_ordinary_fields_pass_and_declare_no_length() -> None:
    fields = [(b"content-type", b"text/plain"), (b"X-Custom_1", b""), (b"set-cookie", b"a=b; c")]
    assert check_fields(fields) == -1
    assert check_fields([]) == -1
    # Repeated: the second time the names are known (the memo), same answer.
    assert check_fields(fields) == -1


@pytest.mark.parametrize("name", [b"", b"x a", b"x:y", b"x\r\ny", b"x\0", b"\xff", b"(x)", b"x\t"])
def test_a_name_that_is_not_a_token_is_refused(name: bytes) -> None:
    with pytest.raises(InvalidField, match="invalid header name"):
        check_fields([(b"ok", b"1"), (name, b"v")])
    assert not is_token(name)


@pytest.mark.parametrize("value", [b"a\rb", b"a\nb", b"a\0b", b"\r\n", b"x\r\nset-cookie: y"])
def test_a_value_with_cr_lf_or_nul_is_refused(value: bytes) -> None:
    with pytest.raises(InvalidField, match="CR, LF or NUL"):
        check_fields([(b"x-value", value)])


def test_other_value_bytes_pass() -> None:
    # obs-text and HTAB are allowed in a field value (RFC 9110 section 5.5).
    assert check_fields([(b"x", b'\t\x7f\x80\xff "quoted"')]) == -1


def test_content_length_is_returned_and_identical_repeats_are_one() -> None:
    assert check_fields([(b"Content-Length", b"13")]) == 13
    assert check_fields([(b"content-length", b"0")]) == 0
    fields = [(b"content-length", b"5"), (b"x", b"y"), (b"CONTENT-LENGTH", b"005")]
    assert check_fields(fields) == 5


def test_conflicting_content_lengths_are_refused() -> None:
    with pytest.raises(InvalidField, match="conflicting Content-Length"):
        check_fields([(b"content-length", b"5"), (b"content-length", b"6")])


@pytest.mark.parametrize(
    "value", [b"", b"-1", b"+1", b" 1", b"1 ", b"1_0", b"0x10", b"1,1", b"\xd9\xa1"]
)
def test_a_content_length_that_is_not_digits_is_refused(value: bytes) -> None:
    with pytest.raises(InvalidField, match="invalid Content-Length"):
        check_fields([(b"content-length", value)])


def test_the_memo_of_known_names_is_bounded() -> None:
    known = headers._KNOWN_NAMES
    saved = set(known)
    for index in range(headers._KNOWN_NAMES_MAX + 100):
        check_fields([(b"x-name-%d" % index, b"v")])
    assert len(known) <= headers._KNOWN_NAMES_MAX
    # A name that did not fit is still checked (and still passes).
    assert check_fields([(b"x-name-%d" % (headers._KNOWN_NAMES_MAX + 99), b"v")]) == -1
    known.clear()
    known.update(saved)


_names = st.binary(min_size=0, max_size=12)
_values = st.binary(max_size=20)


@given(st.lists(st.tuples(_names, _values), max_size=6))
def test_accepts_exactly_the_fields_a_response_may_carry(fields: list[tuple[bytes, bytes]]) -> None:
    names_ok = all(_TOKEN.fullmatch(name) for name, _ in fields)
    values_ok = all(not set(value) & {13, 10, 0} for _, value in fields)
    lengths = [v for n, v in fields if n.lower() == b"content-length"]
    lengths_ok = all(v.isdigit() for v in lengths) and len({int(v) for v in lengths}) <= 1
    try:
        length = check_fields(fields)
    except InvalidField:
        assert not (names_ok and values_ok and lengths_ok)
    else:
        assert names_ok and values_ok and lengths_ok
        assert length == (int(lengths[0]) if lengths else -1)


@given(
    st.lists(
        st.tuples(
            st.text(alphabet=TCHAR.decode(), min_size=1, max_size=12).map(str.encode), _values
        )
    )
)
def test_a_written_block_never_has_more_lines_than_fields(
    fields: list[tuple[bytes, bytes]],
) -> None:
    """Whatever passes can't split the header block: one line per field."""
    try:
        check_fields(fields)
    except InvalidField:
        return
    block = b"".join(name + b": " + value + b"\r\n" for name, value in fields)
    assert block.count(b"\n") == block.count(b"\r") == len(fields)
    lines = block.split(b"\r\n")[:-1]
    assert [line.partition(b":")[0] for line in lines] == [name for name, _ in fields]
