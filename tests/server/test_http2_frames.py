"""``FrameMeter``: frame boundaries, header block sizes and counts, with no event loop."""

from __future__ import annotations

import random

import pytest
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from tidings.server._h2_frames import PREFACE, FrameMeter

STREAM = b"".join(
    [
        PREFACE,
        SettingsFrame(0, settings={4: 1 << 20}).serialize(),
        SettingsFrame(0, flags=["ACK"]).serialize(),  # an ACK asks for nothing
        PingFrame(0, opaque_data=b"12345678").serialize(),
        PingFrame(0, opaque_data=b"12345678", flags=["ACK"]).serialize(),
        HeadersFrame(1, data=b"h" * 100).serialize(),  # no END_HEADERS: a block opens
        ContinuationFrame(1, data=b"c" * 50).serialize(),
        ContinuationFrame(1, data=b"c" * 30, flags=["END_HEADERS"]).serialize(),  # 180
        DataFrame(1, data=b"d" * 5000).serialize(),
        WindowUpdateFrame(0, window_increment=1000).serialize(),
        RstStreamFrame(1, error_code=8).serialize(),
        HeadersFrame(3, data=b"x" * 180, flags=["END_HEADERS", "END_STREAM"]).serialize(),
    ]
)


def _feed(meter: FrameMeter, data: bytes, cuts: list[int]) -> bool:
    ok = True
    start = 0
    for cut in [*cuts, len(data)]:
        ok = meter.feed(data[start:cut]) and ok
        start = cut
    return ok


def test_counts_and_sizes_in_one_read() -> None:
    meter = FrameMeter(180)
    assert meter.feed(STREAM)
    assert (meter.control, meter.resets) == (2, 1)


@pytest.mark.parametrize("seed", range(50))
def test_any_split_of_the_bytes_gives_the_same_account(seed: int) -> None:
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(STREAM)), rng.randint(1, 40)))
    meter = FrameMeter(180)
    assert _feed(meter, STREAM, cuts)
    assert (meter.control, meter.resets) == (2, 1)


def test_one_byte_at_a_time() -> None:
    meter = FrameMeter(180)
    assert all(meter.feed(STREAM[i : i + 1]) for i in range(len(STREAM)))
    assert (meter.control, meter.resets) == (2, 1)


def test_a_block_over_the_limit_is_refused_across_continuations() -> None:
    # 100 + 50 + 30 = 180 bytes across three frames: one byte less is too much.
    assert not FrameMeter(179).feed(STREAM)


def test_a_single_headers_frame_over_the_limit_is_refused() -> None:
    meter = FrameMeter(1024)
    frame = HeadersFrame(1, data=b"h" * 1025, flags=["END_HEADERS"]).serialize()
    assert not meter.feed(PREFACE + frame[:9])  # known from the frame header alone


def test_an_endless_block_is_refused_as_soon_as_it_passes() -> None:
    meter = FrameMeter(32 * 1024)
    assert meter.feed(PREFACE + HeadersFrame(1, data=b"h" * 16000).serialize())
    assert meter.feed(ContinuationFrame(1, data=b"c" * 16000).serialize())
    # The third frame's header says it would pass the limit: refused before its payload.
    assert not meter.feed(ContinuationFrame(1, data=b"c" * 16000).serialize()[:9])


def test_a_new_block_starts_from_zero() -> None:
    meter = FrameMeter(200)
    first = HeadersFrame(1, data=b"h" * 150, flags=["END_HEADERS"]).serialize()
    second = HeadersFrame(3, data=b"h" * 150, flags=["END_HEADERS"]).serialize()
    assert meter.feed(PREFACE + first + second)


def test_a_settings_ack_with_a_payload_is_a_frame_size_error() -> None:
    meter = FrameMeter(1024)
    ack = SettingsFrame(0, flags=["ACK"]).serialize()
    bad = b"\x00\x00\x06" + ack[3:] + b"\x00\x04\x00\x00\x00\x01"
    assert not meter.feed(PREFACE + bad)
    assert meter.frame_size_error
    assert not FrameMeter(1024).frame_size_error
