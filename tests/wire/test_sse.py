"""tidings.wire.sse: encoding events and parsing event streams, no event loop."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidings.wire.sse import EventStreamParser, ServerSentEvent, encode_comment, encode_event


def parse(data: bytes) -> list[ServerSentEvent]:
    return EventStreamParser().feed(data)


def test_encode_plain_event() -> None:
    assert encode_event('{"a":1}') == b'data: {"a":1}\n\n'


def test_encode_with_id_and_type() -> None:
    assert encode_event("x", event_id="7", event="note") == b"event: note\nid: 7\ndata: x\n\n"


@pytest.mark.parametrize("data", ["a\nb", "a\r\nb", "a\rb"])
def test_encode_splits_lines(data: str) -> None:
    assert encode_event(data) == b"data: a\ndata: b\n\n"
    assert parse(encode_event(data)) == [ServerSentEvent("a\nb")]


def test_encode_empty_data_is_an_event() -> None:
    assert encode_event("") == b"data: \n\n"
    assert parse(b"data: \n\n") == [ServerSentEvent("")]


@pytest.mark.parametrize("bad", ["1\n", "1\r", "a\0"])
def test_encode_refuses_breaking_fields(bad: str) -> None:
    with pytest.raises(ValueError, match="event id"):
        encode_event("x", event_id=bad)
    with pytest.raises(ValueError, match="event type"):
        encode_event("x", event=bad)
    with pytest.raises(ValueError, match="comment"):
        encode_comment(bad)


def test_comment() -> None:
    assert encode_comment() == b":\n\n"
    assert encode_comment("hb") == b":hb\n\n"
    assert parse(b":hb\n\n") == []


def test_parse_fields() -> None:
    stream = b"id: 3\nevent: tick\ndata: one\ndata:two\nretry: 1500\nignored: x\nnocolon\n\n"
    parser = EventStreamParser()
    assert parser.feed(stream) == [ServerSentEvent("one\ntwo", "tick", "3")]
    assert parser.retry == 1500
    assert parser.last_event_id == "3"


def test_id_persists_and_nul_id_is_ignored() -> None:
    parser = EventStreamParser()
    events = parser.feed(b"id: 1\ndata: a\n\ndata: b\n\nid: x\0y\ndata: c\n\n")
    assert [(e.data, e.last_event_id) for e in events] == [("a", "1"), ("b", "1"), ("c", "1")]


def test_bad_retry_is_ignored() -> None:
    parser = EventStreamParser()
    parser.feed(b"retry: 12a\n\nretry: \xd9\xa3\n\n")  # not ASCII digits
    assert parser.retry is None


def test_blank_event_without_data_dispatches_nothing() -> None:
    assert parse(b"event: x\n\n\n\n") == []


def test_bom_is_stripped_once() -> None:
    parser = EventStreamParser()
    assert parser.feed(b"") == []
    assert parser.feed(b"\xef\xbb\xbfdata: a\n\n") == [ServerSentEvent("a")]
    assert parser.feed(b"data: \xef\xbb\xbfb\n\n") == [ServerSentEvent("\ufeffb")]


def test_crlf_split_across_chunks() -> None:
    parser = EventStreamParser()
    assert parser.feed(b"data: a\r") == []
    assert parser.feed(b"\n\r") == [ServerSentEvent("a")]
    assert parser.feed(b"\ndata: b\r\r") == [ServerSentEvent("b")]
    assert parser.feed(b"data: c\r") == []
    assert parser.feed(b"data: d\n\n") == [ServerSentEvent("c\nd")]


def test_utf8_split_and_invalid_bytes() -> None:
    parser = EventStreamParser()
    encoded = encode_event("é€")
    assert parser.feed(encoded[:7]) == []
    assert parser.feed(encoded[7:]) == [ServerSentEvent("é€")]
    assert parse(b"data: \xff\n\n") == [ServerSentEvent("\ufffd")]


_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=50)


@given(
    events=st.lists(st.tuples(_text, st.none() | st.from_regex(r"[0-9a-z]{0,5}", fullmatch=True))),
    cut=st.integers(min_value=1, max_value=7),
)
def test_round_trip_in_any_chunks(events: list[tuple[str, str | None]], cut: int) -> None:
    stream = b"".join(encode_event(data, event_id=i) for data, i in events)
    parser = EventStreamParser()
    got: list[ServerSentEvent] = []
    for start in range(0, len(stream), cut):
        got += parser.feed(stream[start : start + cut])
    expected_data = [data.replace("\r\n", "\n").replace("\r", "\n") for data, _ in events]
    assert [e.data for e in got] == expected_data
    last = ""
    for (_, event_id), event in zip(events, got, strict=True):
        last = event_id if event_id is not None else last
        assert event.last_event_id == last
