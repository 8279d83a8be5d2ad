"""Topic names, filters and route patterns (MQTT 5.0 section 4.7); no broker, no loop."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidings.mqtt import TopicError, check_filter, check_topic
from tidings.mqtt._topics import TopicPattern, filter_covers, filter_matches, minimal_filters


@pytest.mark.parametrize(
    ("topic_filter", "topic", "expected"),
    [
        ("a/b", "a/b", True),
        ("a/+", "a/b", True),
        ("a/+", "a/b/c", False),
        ("a/#", "a", True),  # section 4.7.1.2: "#" also matches the parent level
        ("a/#", "a/b/c", True),
        ("+/+", "/x", True),  # an empty level is a level
        ("#", "$SYS/broker", False),  # section 4.7.2
        ("+/broker", "$SYS/broker", False),
        ("$SYS/#", "$SYS/broker", True),
        ("a/b", "a/b/", False),
    ],
)
def test_filter_matches(topic_filter: str, topic: str, expected: bool) -> None:
    assert filter_matches(topic_filter, topic) is expected


@pytest.mark.parametrize(
    ("bad", "why"),
    [("a/#/b", "'#' must be"), ("a#", "'#' must be"), ("a/b+", "'+' must be"), ("", "empty")],
)
def test_bad_filters(bad: str, why: str) -> None:
    with pytest.raises(TopicError, match=re.escape(why)):
        check_filter(bad)


def test_names_and_filters_are_str() -> None:
    with pytest.raises(TopicError, match="must be a str"):
        check_topic(b"a/b")
    with pytest.raises(TopicError, match="must be a str"):
        check_filter(None)


def test_patterns_capture_named_levels() -> None:
    pattern = TopicPattern.parse("site/<site>/+/<device>/#")
    assert pattern.topic_filter == "site/+/+/+/#"
    assert pattern.match("site/paris/floor2/d7/temp/c") == {"site": "paris", "device": "d7"}
    assert pattern.match("other/paris/x/d7") is None


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        ("a/<x>/<x>", "twice"),
        ("a/<x>y", "a capture is a whole level"),
        ("a/<1x>", "a capture is a whole level"),
        ("$share/g/a", "SHARED_GROUP"),
        ("a/#/<x>", "'#' must be"),
        (42, "must be a str"),
    ],
)
def test_bad_patterns(bad: object, why: str) -> None:
    with pytest.raises(TopicError, match=why):
        TopicPattern.parse(bad)


def test_minimal_filters_keep_one_subscription_per_message() -> None:
    assert filter_covers("a/#", "a/+/c")
    assert filter_covers("+/+", "a/b")
    assert not filter_covers("a/+", "a/#")
    assert not filter_covers("#", "$SYS/x")
    assert minimal_filters({"a/+/t": 2, "a/#": 0, "b": 1}) == {"a/#": 2, "b": 1}
    assert minimal_filters({"a/b": 1, "a/b/#": 0}) == {"a/b/#": 1}


_filter_level = st.sampled_from(["a", "b", "", "$x", "+"])
_topic_level = st.sampled_from(["a", "b", "", "$x"])


def _filter(levels: list[str], multi: bool) -> str:
    return "/".join([*levels, "#"] if multi else levels)


@given(
    st.lists(_filter_level, min_size=1, max_size=3),
    st.booleans(),
    st.lists(_filter_level, min_size=1, max_size=3),
    st.booleans(),
    st.lists(_topic_level, min_size=1, max_size=5),
)
def test_a_covering_filter_matches_whatever_the_covered_one_matches(
    wide: list[str], wide_multi: bool, narrow: list[str], narrow_multi: bool, topic: list[str]
) -> None:
    wide_filter, narrow_filter = _filter(wide, wide_multi), _filter(narrow, narrow_multi)
    name = "/".join(topic)
    if filter_covers(wide_filter, narrow_filter) and filter_matches(narrow_filter, name):
        assert filter_matches(wide_filter, name)
