"""HTTP/2 in a real browser: one page, 10 SSE streams and a WebSocket on one connection.

``tidings serve`` runs this module's ``app`` over HTTPS with a certificate the test
makes; headless Chromium (told to accept that certificate) opens a page that starts 10
``EventSource`` streams and one ``WebSocket``. Over HTTP/2 all of them deliver: they
are streams of the page's one connection, the WebSocket an extended CONNECT (RFC 8441)
on it. The browser's own ``nextHopProtocol`` says ``h2``, and the server sees every
scope with ``http_version`` "2" from one client address and port.

The same page over HTTP/1.1 (``--no-http2``) shows what HTTP/2 fixes: Chromium opens at
most 6 connections to a host, so 6 streams deliver and the other 4 wait.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium.webdriver.remote.webdriver import WebDriver

from tests.browser.harness import BrowserFactory, ServerProcess, console_log, serving, wait_js

pytestmark = pytest.mark.browser

_STREAMS = 10
# What the server has seen, for ``/stats``: (http_version, client port) of each scope.
_seen: dict[str, list[list[Any]]] = {"sse": [], "ws": []}

_PAGE = (
    b"""<!doctype html>
<html><head><title>h2</title></head><body>
<script>
window.got = {sse: [], ws: null, errors: []};
for (let i = 0; i < %d; i++) {
  const source = new EventSource('/sse?' + i);
  source.onmessage = (e) => { if (!got.sse.includes(e.data)) got.sse.push(e.data); };
}
const ws = new WebSocket('wss://' + location.host + '/ws');
ws.onopen = () => ws.send('ping');
ws.onmessage = (e) => { got.ws = e.data; };
ws.onerror = () => got.errors.push('websocket error');
</script></body></html>
"""
    % _STREAMS
)


async def _respond(send: Any, body: bytes, content_type: bytes) -> None:
    headers = [(b"content-type", content_type), (b"cache-control", b"no-store")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The page, its SSE streams (``/sse``), a WebSocket echo and ``/stats``."""
    if scope["type"] == "lifespan":
        return
    seen = [scope["http_version"], scope["client"][1]]
    if scope["type"] == "websocket":
        _seen["ws"].append(seen)
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        message = await receive()
        if message["type"] == "websocket.receive":
            echo = f"{message.get('text')} over HTTP/{scope['http_version']}"
            await send({"type": "websocket.send", "text": echo})
            await receive()  # until the page goes
        return
    path = scope["path"]
    if path == "/sse":
        _seen["sse"].append(seen)
        headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-store")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        data = b"data: stream %s\n\n" % scope["query_string"]
        await send({"type": "http.response.body", "body": data, "more_body": True})
        while (await receive())["type"] != "http.disconnect":
            pass
    elif path == "/stats":
        await _respond(send, json.dumps(_seen).encode(), b"application/json")
    else:
        await _respond(send, _PAGE, b"text/html; charset=utf-8")


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A throwaway self-signed certificate for 127.0.0.1 and its key (openssl)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.fail("openssl is needed to make a test certificate (apt-get install openssl)")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            *(openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"),
            *("-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=t"),
            *("-addext", "subjectAltName=IP:127.0.0.1"),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@contextlib.contextmanager
def _page(
    browser_factory: BrowserFactory, certificate: tuple[Path, Path], tmp_path: Path, *flags: str
) -> Iterator[tuple[WebDriver, ServerProcess]]:
    """Serve ``app`` over HTTPS (with ``flags``) and open its page in Chromium."""
    cert, key = certificate
    args = ["--ssl-certfile", str(cert), "--ssl-keyfile", str(key), "--lifespan", "off"]
    # SSE streams last until the client leaves; Chromium may hold HTTP/1.1 ones open
    # after the page has gone. Shutdown does not wait for them.
    args += ["--graceful-timeout", "1"]
    with serving(
        f"{__name__}:app",
        settings="tests.browser.project.settings",
        log=tmp_path / "server.log",
        args=[*args, *flags],
    ) as server:
        driver = browser_factory()
        # The certificate is the test's own: Chromium is told to accept it.
        driver.execute_cdp_cmd("Security.setIgnoreCertificateErrors", {"ignore": True})
        driver.get(f"https://127.0.0.1:{server.port}/")
        try:
            yield driver, server
        finally:
            # Leaving the page ends its streams: the server then stops at once,
            # without waiting out --graceful-timeout for them.
            driver.get("about:blank")


def test_sse_streams_and_a_websocket_share_one_http2_connection(
    browser_factory: BrowserFactory, certificate: tuple[Path, Path], tmp_path: Path
) -> None:
    with _page(browser_factory, certificate, tmp_path) as (driver, server):
        got = wait_js(
            driver,
            f"return got.sse.length === {_STREAMS} && got.ws !== null && got;",
            message=f"{_STREAMS} SSE streams and the WebSocket echo",
            describe="return got;",
        )
        stats = driver.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "fetch('/stats').then((r) => r.json()).then(done);"
        )
        # The browser's own account of the protocol: the page's, and the fetch's.
        page = driver.execute_script(
            "return performance.getEntriesByType('navigation')[0].nextHopProtocol;"
        )
        fetched = wait_js(
            driver,
            "return performance.getEntriesByType('resource')"
            ".filter((e) => e.name.endsWith('/stats')).map((e) => e.nextHopProtocol)[0];",
            message="the resource timing entry of /stats",
        )
        log = server.output
    assert sorted(got["sse"]) == sorted(f"stream {i}" for i in range(_STREAMS)), console_log(driver)
    assert got["ws"] == "ping over HTTP/2"
    assert got["errors"] == []
    assert (page, fetched) == ("h2", "h2")
    # The server's account: every stream and the WebSocket (an extended CONNECT) came
    # over HTTP/2 from the same client port, i.e. on one connection.
    assert len(stats["sse"]) == _STREAMS and len(stats["ws"]) == 1
    assert {version for version, _ in stats["sse"] + stats["ws"]} == {"2"}
    assert len({port for _, port in stats["sse"] + stats["ws"]}) == 1
    assert "Exception in ASGI" not in log


def test_over_http11_the_seventh_stream_waits(
    browser_factory: BrowserFactory, certificate: tuple[Path, Path], tmp_path: Path
) -> None:
    with _page(browser_factory, certificate, tmp_path, "--no-http2") as (driver, _):
        wait_js(
            driver,
            "return got.sse.length >= 6 && got.ws !== null;",
            message="6 SSE streams and the WebSocket echo over HTTP/1.1",
            describe="return got;",
        )
        # Give the browser time it would need to start a 7th stream, were it allowed.
        time.sleep(1.0)
        got = driver.execute_script("return got;")
        protocol = driver.execute_script(
            "return performance.getEntriesByType('navigation')[0].nextHopProtocol;"
        )
    assert protocol == "http/1.1"
    assert got["ws"] == "ping over HTTP/1.1"
    assert len(got["sse"]) == 6  # Chromium's limit of 6 connections per host
