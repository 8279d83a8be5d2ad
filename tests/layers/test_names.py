"""Channel and group name rules (tidings.layers._names and the BaseChannelLayer methods)."""

from __future__ import annotations

import string
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidings.layers import InMemoryChannelLayer
from tidings.layers._names import (
    MAX_NAME_LENGTH,
    check_channel_name,
    check_group_name,
    check_name_prefix,
    non_local_name,
)

ALPHABET = string.ascii_letters + string.digits + "-_."
plain_names = st.text(alphabet=ALPHABET, min_size=1, max_size=MAX_NAME_LENGTH - 1)


@pytest.fixture
def layer() -> InMemoryChannelLayer:
    return InMemoryChannelLayer()


@pytest.mark.parametrize(
    "name",
    [
        "chat",
        "http.request",
        "websocket.send-1_2",
        "specific.abc!def",
        "specific.abc!",
        "a",
        "x" * 99,
        "A.b-C_d.0",
    ],
)
def test_valid_channel_name(layer: InMemoryChannelLayer, name: str) -> None:
    assert layer.require_valid_channel_name(name) is True
    check_channel_name(name)


@pytest.mark.parametrize(
    ("name", "rule"),
    [
        (42, "; not int"),
        (b"chat", "; not bytes"),
        (None, "; not NoneType"),
        ("", "; not an empty string"),
        ("x" * 100, "'xxxxxxxxxx" + "x" * 50 + "'... (100 characters) is too long"),
        ("x" * 500, "(500 characters)"),
        ("has space", "contains ' ' at position 3"),
        ("tab\there", "contains '\\t' at position 3"),
        ("new\n", "contains '\\n' at position 3"),
        ("caf\u00e9", "; 'café' contains 'é' at position 3"),
        ("a/b", "contains '/'"),
        ("a!b!c", "more than one '!'"),
        ("!local", "nothing before its '!'"),
        ("a?b", "single-reader '?' names"),
        ("specific.a!b c", "contains ' ' at position 12"),
    ],
    ids=repr,
)
def test_invalid_channel_names_say_which_rule(
    layer: InMemoryChannelLayer, name: Any, rule: str
) -> None:
    with pytest.raises(TypeError, match=r"^Channel name") as info:
        layer.require_valid_channel_name(name)
    assert rule in str(info.value)


def test_long_names_are_shortened_in_messages() -> None:
    with pytest.raises(TypeError) as info:
        check_channel_name("y" * 1000)
    assert "y" * 61 not in str(info.value)
    assert "(1000 characters)" in str(info.value)


@pytest.mark.parametrize("name", ["chat", "room-1.2_3", "x" * 99])
def test_valid_group_names(layer: InMemoryChannelLayer, name: str) -> None:
    assert layer.require_valid_group_name(name) is True


@pytest.mark.parametrize(
    ("name", "rule"),
    [
        (7, "; not int"),
        ("", "; not an empty string"),
        ("x" * 100, "is too long"),
        ("a!b", "contains '!'"),
        ("room!", "contains '!'"),
        ("a b", "contains ' ' at position 1"),
        ("a?", "single-reader"),
    ],
    ids=repr,
)
def test_invalid_group_names_say_which_rule(
    layer: InMemoryChannelLayer, name: Any, rule: str
) -> None:
    with pytest.raises(TypeError, match=r"^Group name") as info:
        layer.require_valid_group_name(name)
    assert rule in str(info.value)


def test_prefix_rules() -> None:
    check_name_prefix("specific")
    with pytest.raises(TypeError, match=r"^Channel prefix must be a str .*; 'a!' contains '!'"):
        check_name_prefix("a!")
    with pytest.raises(TypeError, match=r"^Channel prefix must be a str .*; not an empty string"):
        check_name_prefix("")


def test_receive_rule_for_process_specific_names(layer: InMemoryChannelLayer) -> None:
    assert layer.require_valid_channel_name("specific.abc!", receive=True)
    assert layer.require_valid_channel_name("plain", receive=True)
    assert layer.require_valid_channel_name("specific.abc!def")
    with pytest.raises(TypeError, match="must end at the '!'"):
        layer.require_valid_channel_name("specific.abc!def", receive=True)
    with pytest.raises(TypeError, match="more than one"):
        layer.require_valid_channel_name("a!b!", receive=True)


def test_valid_channel_names_checks_each_name(layer: InMemoryChannelLayer) -> None:
    assert layer.valid_channel_names(["a", "b!c"])
    assert layer.valid_channel_names(("a",))
    assert layer.valid_channel_names([])
    with pytest.raises(TypeError, match="must be a list or tuple, not str"):
        layer.valid_channel_names("abc")
    with pytest.raises(TypeError, match="contains ' '"):
        layer.valid_channel_names(["good", "not good"])
    with pytest.raises(TypeError, match="must end at the '!'"):
        layer.valid_channel_names(["a!b"], receive=True)


def test_match_type_and_length(layer: InMemoryChannelLayer) -> None:
    assert layer.MAX_NAME_LENGTH == 100
    assert layer.match_type_and_length("x" * 99)
    assert not layer.match_type_and_length("x" * 100)
    assert not layer.match_type_and_length(b"x")
    # Only type and length: characters are not looked at.
    assert layer.match_type_and_length("not valid at all!!")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("specific.abc!def", "specific.abc!"),
        ("specific.abc!", "specific.abc!"),
        ("plain.channel", "plain.channel"),
    ],
)
def test_non_local_name(layer: InMemoryChannelLayer, name: str, expected: str) -> None:
    assert layer.non_local_name(name) == expected
    assert non_local_name(name) == expected


@given(plain_names)
def test_names_from_the_alphabet_are_valid(name: str) -> None:
    check_channel_name(name)
    check_group_name(name)
    check_name_prefix(name)


@given(plain_names, st.text(alphabet=ALPHABET, max_size=MAX_NAME_LENGTH))
def test_process_specific_names_are_valid_channels_only(remote: str, local: str) -> None:
    name = f"{remote}!{local}"
    if len(name) < MAX_NAME_LENGTH:
        check_channel_name(name)
    else:
        with pytest.raises(TypeError, match="shorter than"):
            check_channel_name(name)
    with pytest.raises(TypeError):
        check_group_name(name)


@given(plain_names, st.characters().filter(lambda c: c not in ALPHABET + "!"), st.data())
def test_any_other_character_is_rejected(name: str, bad: str, data: st.DataObject) -> None:
    position = data.draw(st.integers(min_value=0, max_value=len(name)))
    candidate = name[:position] + bad + name[position:]
    with pytest.raises(TypeError):
        check_channel_name(candidate)
    with pytest.raises(TypeError):
        check_group_name(candidate)


@pytest.mark.parametrize(
    ("check", "kind", "name"),
    [
        ("require_valid_channel_name", "Channel", "a" * 101),
        ("require_valid_channel_name", "Channel", "a b"),
        ("require_valid_channel_name", "Channel", "a!b!c"),
        ("require_valid_group_name", "Group", "a" * 101),
        ("require_valid_group_name", "Group", "a!b"),
    ],
)
def test_every_message_starts_with_invalid_name_error(
    layer: InMemoryChannelLayer, check: str, kind: str, name: str
) -> None:
    """Channels' tests match ``invalid_name_error.format(kind)`` against the message."""
    with pytest.raises(TypeError) as info:
        getattr(layer, check)(name)
    assert str(info.value).startswith(layer.invalid_name_error.format(kind) + "; ")


def test_valid_name_methods_are_deprecated(layer: InMemoryChannelLayer) -> None:
    with pytest.warns(DeprecationWarning, match="valid_channel_name is deprecated"):
        assert layer.valid_channel_name("chat")
    with pytest.warns(DeprecationWarning, match="valid_group_name is deprecated"):
        assert layer.valid_group_name("chat")
    with pytest.warns(DeprecationWarning, match="deprecated"), pytest.raises(TypeError):
        layer.valid_group_name("a b")
