"""HPACK codec: tidings.wire.hpack against the hpack library (h2's codec), same run.

Decoding, in microseconds per header block:

- ``h2load first``: the first request block of an h2load connection (captured from
  h2load 1.52 against a socket that recorded its HEADERS frames), decoded by a new
  decoder, whose construction is counted; ``cold`` also empties our process-wide
  Huffman cache before each block, ``warm`` keeps it (a server sees the same strings
  on every connection);
- ``h2load repeat``: the block h2load sends for every later request (five indexed
  fields), on a decoder that decoded the first;
- ``chromium first`` / ``repeat`` / ``next``: a browser-like navigation block (16
  fields, Huffman, incremental indexing, encoded by the hpack library's encoder), the
  same request again, and the next request with a new ``:path`` and fetch metadata.

Encoding: a small response (``:status 200``, ``content-type``, ``content-length``)
on one encoder, ours, the hpack library's and the server's current ``StaticEncoder``.

Memory: bytes per connection of a decoder and an encoder after an h2load request, a
repeat and two responses.

Pure CPU, one process; run under the benchmark lock, the machine is shared:

    flock /tmp/tidings-bench.lock .venv/bin/python benchmarks/hpack_codec.py [--write]
"""

from __future__ import annotations

import argparse
import gc
import sys
import timeit
import tracemalloc
from collections.abc import Callable
from functools import partial
from pathlib import Path

import hpack

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _peers import result_header, write_results

from tidings.server._h2_hpack import StaticEncoder
from tidings.wire import hpack as ours

H2LOAD_FIRST = bytes.fromhex("8486418b089d5c0b8170dc69e75e6f827a8f9c541c722954d3a5358980aed89707")
H2LOAD_REPEAT = bytes.fromhex("8486bf82be")

CHROMIUM = [
    (b":method", b"GET"),
    (b":authority", b"app.example.com"),
    (b":scheme", b"https"),
    (b":path", b"/chat/room/lobby/"),
    (b"sec-ch-ua", b'"Chromium";v="124", "Google Chrome";v="124", "Not-A.Brand";v="99"'),
    (b"sec-ch-ua-mobile", b"?0"),
    (b"sec-ch-ua-platform", b'"Linux"'),
    (b"upgrade-insecure-requests", b"1"),
    (
        b"user-agent",
        b"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
        b"Chrome/124.0.0.0 Safari/537.36",
    ),
    (
        b"accept",
        b"text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,"
        b"image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7",
    ),
    (b"sec-fetch-site", b"same-origin"),
    (b"sec-fetch-mode", b"navigate"),
    (b"sec-fetch-dest", b"document"),
    (b"accept-encoding", b"gzip, deflate, br, zstd"),
    (b"accept-language", b"en-US,en;q=0.9"),
    (b"cookie", b"sessionid=8f1c2a9e7b6d4c3a2f1e0d9c8b7a6f5e; csrftoken=Zx81Kq0pLmN4"),
]
# The next request of the page: a script, with a new path and fetch metadata.
_NEXT = {b":path": b"/static/app.js", b"sec-fetch-mode": b"no-cors", b"sec-fetch-dest": b"script"}
CHROMIUM_NEXT = [
    (name, _NEXT.get(name, value))
    for name, value in CHROMIUM
    if name != b"upgrade-insecure-requests"
]
RESPONSE = [(b":status", b"200"), (b"content-type", b"text/plain"), (b"content-length", b"13")]


def _chromium_blocks() -> tuple[bytes, bytes, bytes]:
    encoder = hpack.Encoder()
    return encoder.encode(CHROMIUM), encoder.encode(CHROMIUM), encoder.encode(CHROMIUM_NEXT)


def _best(fn: Callable[[], object], number: int, repeat: int) -> float:
    """The best of ``repeat`` runs, in microseconds per call."""
    return min(timeit.repeat(fn, number=number, repeat=repeat)) / number * 1e6


def _ours_decode(first: bytes) -> ours.Decoder:
    decoder = ours.Decoder()
    decoder.decode(first)
    return decoder


def _theirs_decode(first: bytes) -> hpack.Decoder:
    decoder = hpack.Decoder()
    decoder.decode(first, raw=True)
    return decoder


def decode_cases(number: int, repeat: int) -> dict[str, dict[str, float]]:
    chrome_first, chrome_repeat, chrome_next = _chromium_blocks()
    cache = ours._HUFFMAN_CACHE

    def cold(first: bytes) -> Callable[[], object]:
        def run() -> object:
            cache.clear()
            return _ours_decode(first)

        return run

    results: dict[str, dict[str, float]] = {}
    for label, first, again in (
        ("h2load", H2LOAD_FIRST, H2LOAD_REPEAT),
        ("chromium", chrome_first, chrome_repeat),
    ):
        results[f"{label} first"] = {
            "tidings cold": _best(cold(first), number, repeat),
            "tidings warm": _best(partial(_ours_decode, first), number, repeat),
            "hpack": _best(partial(_theirs_decode, first), number, repeat),
        }
        mine, theirs = _ours_decode(first), _theirs_decode(first)
        expected = [(bytes(n), bytes(v)) for n, v in theirs.decode(again, raw=True)]
        assert mine.decode(again) == expected
        results[f"{label} repeat"] = {
            "tidings": _best(partial(mine.decode, again), number * 10, repeat),
            "hpack": _best(partial(theirs.decode, again, raw=True), number, repeat),
        }

    # The next request changes the table, so it cannot be timed alone on one decoder:
    # each call decodes the first block on a new decoder, then the next.
    def ours_next() -> object:
        return _ours_decode(chrome_first).decode(chrome_next)

    def theirs_next() -> object:
        return _theirs_decode(chrome_first).decode(chrome_next, raw=True)

    results["chromium first+next"] = {
        "tidings warm": _best(ours_next, number, repeat),
        "hpack": _best(theirs_next, number, repeat),
    }
    return results


def encode_cases(number: int, repeat: int) -> dict[str, dict[str, float]]:
    mine, theirs, static = ours.Encoder(), hpack.Encoder(), StaticEncoder()
    for encoder in (mine, theirs, static):
        encoder.encode(RESPONSE)
    assert ours.Decoder().decode(static.encode(RESPONSE)) == RESPONSE
    return {
        "response": {
            "tidings": _best(lambda: mine.encode(RESPONSE), number * 10, repeat),
            "hpack": _best(lambda: theirs.encode(RESPONSE), number, repeat),
            "StaticEncoder": _best(lambda: static.encode(RESPONSE), number * 10, repeat),
        }
    }


def memory_per_connection(count: int = 1000) -> dict[str, int]:
    """Bytes per connection of a decoder and an encoder after an h2load request, a
    repeat and two responses (tracemalloc), ours and the hpack library's."""

    def ours_pair() -> object:
        decoder, encoder = ours.Decoder(), ours.Encoder()
        decoder.decode(H2LOAD_FIRST)
        decoder.decode(H2LOAD_REPEAT)
        encoder.encode(RESPONSE)
        encoder.encode(RESPONSE)
        return decoder, encoder

    def theirs_pair() -> object:
        decoder, encoder = hpack.Decoder(), hpack.Encoder()
        decoder.decode(H2LOAD_FIRST, raw=True)
        decoder.decode(H2LOAD_REPEAT, raw=True)
        encoder.encode(RESPONSE)
        encoder.encode(RESPONSE)
        return decoder, encoder

    figures = {}
    for who, make in (("tidings", ours_pair), ("hpack", theirs_pair)):
        make()
        gc.collect()
        tracemalloc.start()
        kept = [make() for _ in range(count)]
        size, _ = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        figures[who] = round(size / len(kept))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--number", type=int, default=2000, help="calls per timing")
    parser.add_argument("--repeat", type=int, default=5, help="timings; the best is kept")
    parser.add_argument("--write", action="store_true", help="write benchmarks/results")
    args = parser.parse_args()
    payload = result_header("hpack_codec")
    payload["unit"] = "microseconds per header block (best of --repeat)"
    payload["decode"] = decode_cases(args.number, args.repeat)
    payload["encode"] = encode_cases(args.number, args.repeat)
    for kind in ("decode", "encode"):
        for case, figures in payload[kind].items():
            row = "  ".join(f"{who} {us:7.2f}" for who, us in figures.items())
            print(f"{kind:6} {case:22} {row}")
    payload["bytes per connection"] = memory_per_connection()
    print("memory bytes per connection   ", payload["bytes per connection"])
    if args.write:
        print("wrote", write_results(payload))


if __name__ == "__main__":
    main()
