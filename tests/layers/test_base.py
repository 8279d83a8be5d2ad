"""BaseChannelLayer: options, capacities and the abstract contract."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tidings.layers import BaseChannelLayer, Message
from tidings.layers.base import DEFAULT_CAPACITY, DEFAULT_EXPIRY


class MinimalLayer(BaseChannelLayer):
    """The smallest concrete layer: every abstract method, doing nothing."""

    async def send(self, channel: str, message: Message) -> None:
        return None

    async def receive(self, channel: str) -> Message:
        return {}

    async def new_channel(self, prefix: str = "specific") -> str:
        return f"{prefix}.x!y"

    async def group_add(self, group: str, channel: str) -> None:
        return None

    async def group_discard(self, group: str, channel: str) -> None:
        return None

    async def group_send(self, group: str, message: Message) -> None:
        return None

    async def flush(self) -> None:
        return None


def test_defaults() -> None:
    layer = MinimalLayer()
    assert layer.expiry == DEFAULT_EXPIRY == 60
    assert layer.capacity == DEFAULT_CAPACITY == 100
    assert layer.channel_capacity == []
    assert layer.extensions == ["groups", "flush"]
    assert layer.get_capacity("anything") == 100


async def test_unimplemented_methods_raise_not_implemented() -> None:
    """As in Channels, the base class can be made (for its name checks); its I/O cannot run."""

    class Incomplete(BaseChannelLayer):
        async def send(self, channel: str, message: Message) -> None:
            return None

    layer = Incomplete()
    await layer.send("chat", {"type": "x"})
    with pytest.raises(NotImplementedError, match=r"Incomplete does not implement receive\(\)"):
        await layer.receive("chat")
    base = BaseChannelLayer()
    assert base.require_valid_group_name("chat")
    for call in (
        base.new_channel(),
        base.group_add("g", "c"),
        base.group_discard("g", "c"),
        base.group_send("g", {}),
        base.flush(),
    ):
        with pytest.raises(NotImplementedError):
            await call


async def test_close_is_a_no_op_by_default() -> None:
    await MinimalLayer().close()  # nothing to release, nothing raised


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"expiry": 0}, "expiry must be a positive number"),
        ({"expiry": -1}, "expiry must be a positive number"),
        ({"expiry": "60"}, "expiry must be a positive number"),
        ({"expiry": True}, "expiry must be a positive number"),
        ({"expiry": float("nan")}, "expiry must be a positive number"),
        ({"capacity": 0}, "capacity must be an int >= 1"),
        ({"capacity": 1.5}, "capacity must be an int >= 1"),
        ({"capacity": False}, "capacity must be an int >= 1"),
        ({"channel_capacity": {"a.*": 0}}, "channel_capacity['a.*'] must be an int >= 1"),
    ],
    ids=repr,
)
def test_bad_options_raise_value_error(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        MinimalLayer(**options)


def test_capacity_keys_must_be_globs_or_regexes() -> None:
    with pytest.raises(TypeError, match="glob strings or compiled regexes, not int"):
        MinimalLayer(channel_capacity={5: 1})  # type: ignore[dict-item]


def test_float_expiry_is_accepted() -> None:
    assert MinimalLayer(expiry=0.5).expiry == 0.5


def test_capacity_patterns_first_match_wins() -> None:
    layer = MinimalLayer(
        capacity=7,
        channel_capacity={
            "http.request": 1,
            "http.*": 2,
            re.compile(r"websocket\.(send|receive)"): 3,
            "*": 4,
        },
    )
    assert layer.get_capacity("http.request") == 1
    assert layer.get_capacity("http.disconnect") == 2
    assert layer.get_capacity("websocket.send") == 3
    assert layer.get_capacity("websocket.send.more") == 3  # regexes match at the start
    assert layer.get_capacity("other") == 4


def test_globs_match_whole_names_only() -> None:
    layer = MinimalLayer(capacity=7, channel_capacity={"chat": 1, "room.?": 2})
    assert layer.get_capacity("chat") == 1
    assert layer.get_capacity("chat.x") == 7
    assert layer.get_capacity("room.a") == 2
    assert layer.get_capacity("room.ab") == 7


def test_compile_capacities_takes_pairs() -> None:
    compiled = BaseChannelLayer.compile_capacities([("a*", 2), (re.compile("b"), 3)])
    assert [capacity for _, capacity in compiled] == [2, 3]
    assert compiled[0][0].match("abc")
    assert not compiled[0][0].match("bac")


@pytest.mark.parametrize("message", ["x", None, ["type", "x"]], ids=repr)
def test_require_message(message: Any) -> None:
    with pytest.raises(TypeError, match="message must be a dict"):
        BaseChannelLayer.require_message(message)
    BaseChannelLayer.require_message({})


async def test_set_direct_is_a_no_op_by_default() -> None:
    """Direct delivery is a Tidings extension: a layer that does not override it queues
    every message, and never calls the writer it was offered."""
    calls: list[Message] = []

    def send_now(message: Message) -> bool:
        calls.append(message)
        return True

    for layer in (MinimalLayer(), BaseChannelLayer()):
        assert layer.set_direct("specific.x!y", send_now) is None
        assert layer.set_direct("specific.x!y", None) is None
    await MinimalLayer().group_send("room", {"type": "websocket.send", "text": "x"})
    assert calls == []
