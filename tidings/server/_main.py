"""One server process: bind or adopt sockets, run lifespan, serve, shut down gracefully.

``run(config)`` is the entry point for everything: with ``--workers 1`` and
no ``--reload`` it serves in this process; otherwise it hands over to the
supervisor in ``tidings.server._supervisor``, which forks processes that each
run ``_serve_worker`` (handed to it, so that it need not import this module) and
end up in ``Server.serve`` on the sockets the supervisor bound.

Shutdown (SIGTERM, SIGINT or SIGHUP): stop accepting, close idle connections
at once, let in-flight requests finish for up to ``--graceful-timeout``
seconds, then cancel what is left, run lifespan shutdown and exit 0. A second
signal at least ``SIGNAL_DEBOUNCE`` seconds after the first exits at once; one
sooner is the same stop arriving twice (a signal to the process group reaches
a worker directly and through its supervisor) and is ignored.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import signal
import socket
import ssl
import stat
import time
from collections.abc import Callable
from typing import cast

from tidings import _metrics
from tidings._types import ASGIApp
from tidings.server._http2 import AlpnSelector
from tidings.server._http2 import install as install_http2
from tidings.server._http11 import HttpProtocol
from tidings.server._lifespan import Lifespan, LifespanError
from tidings.server._proxy import ProxyTrust
from tidings.server._state import ServerState
from tidings.server._supervisor import Supervisor
from tidings.server._websocket import install as install_websocket
from tidings.server._worker import EXIT_STARTUP_FAILED
from tidings.server.config import Config, ConfigError
from tidings.server.errors import ServerError

__all__ = [
    "EXIT_STARTUP_FAILED",
    "AppImportError",
    "Server",
    "bind_sockets",
    "import_app",
    "run",
]

logger = logging.getLogger("tidings.error")

#: Seconds within which a repeated stop signal counts as the same stop (see above).
SIGNAL_DEBOUNCE = 1.0

#: Seconds between two timeout sweeps (``Server.sweep_interval``; tests shorten it).
_SWEEP_INTERVAL = 1.0


class AppImportError(ServerError):
    """The ``module:attr`` given to ``tidings serve`` could not be loaded."""


def import_app(target: str | object, *, factory: bool = False) -> ASGIApp:
    """Load the ASGI app named ``module:attr`` (``attr`` may be dotted).

    Raises:
        AppImportError: with a message that says what was wrong.
    """
    if not isinstance(target, str):
        app: object = target
    else:
        module_name, sep, attrs = target.partition(":")
        if not sep or not module_name or not attrs:
            raise AppImportError(f"application {target!r} must be given as 'module:attribute'")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name and not module_name.startswith(f"{exc.name}."):
                raise
            raise AppImportError(f"could not import module {module_name!r}") from exc
        app = module
        for part in attrs.split("."):
            try:
                app = getattr(app, part)
            except AttributeError:
                raise AppImportError(f"module {module_name!r} has no attribute {attrs!r}") from None
    if factory:
        if not callable(app):
            raise AppImportError(f"--factory given but {target!r} is not callable")
        app = app()
    if not callable(app):
        raise AppImportError(f"{target!r} is not an ASGI application (not callable)")
    return cast(ASGIApp, app)


def bind_sockets(config: Config) -> list[socket.socket]:
    """Create the listening sockets (before any fork, so workers share them)."""
    if config.fd is not None:
        sock = socket.socket(fileno=config.fd)
        sock.set_inheritable(True)
        return [sock]
    if config.uds is not None:
        path = config.uds
        try:
            if stat.S_ISSOCK(os.stat(path).st_mode):
                os.unlink(path)  # a stale socket from a previous run
        except FileNotFoundError:
            pass
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(path)
        os.chmod(path, 0o660)
        sock.listen(config.limits.backlog)
        sock.set_inheritable(True)
        return [sock]
    family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((config.host, config.port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {config.host}:{config.port}: {exc.strerror}") from exc
    sock.listen(config.limits.backlog)
    sock.set_inheritable(True)
    return [sock]


def _ssl_context(config: Config) -> ssl.SSLContext | None:
    if not config.is_ssl:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(
            cast(str, config.ssl_certfile), config.ssl_keyfile, config.ssl_keyfile_password
        )
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"--ssl-certfile/--ssl-keyfile: cannot load: {exc}") from exc
    # RFC 7301: the client's preference decides among ours; browsers list h2 first.
    ctx.set_alpn_protocols(["h2", "http/1.1"] if config.http2 else ["http/1.1"])
    return ctx


class Server:
    """Serves one app on given sockets in the running event loop."""

    def __init__(self, config: Config, app: ASGIApp) -> None:
        self.config = config
        self.app = app
        self.state: ServerState | None = None
        self._stop: asyncio.Event | None = None
        self._servers: list[asyncio.AbstractServer] = []
        self.started = False
        #: Called once the server listens (the supervisor's readiness signal).
        self.on_started: Callable[[], None] | None = None
        #: Seconds between timeout sweeps; set before ``serve`` (tests shorten it).
        self.sweep_interval = _SWEEP_INTERVAL

    def request_stop(self) -> None:
        """Begin graceful shutdown; a second call during it cuts it short.

        Not thread-safe: call from the event loop (``loop.call_soon_threadsafe``).
        """
        if self._stop is not None:
            self._stop.set()

    async def serve(self, sockets: list[socket.socket]) -> int:
        """Serve until asked to stop; return the process exit status."""
        loop = asyncio.get_running_loop()
        config = self.config
        proxy = ProxyTrust(config.forwarded_allow_ips) if config.proxy_headers else None
        state = self.state = ServerState(config, self.app, loop, proxy=proxy)
        install_websocket(state)
        install_http2(state)
        self._stop = asyncio.Event()

        lifespan = Lifespan(self.app, config.lifespan, state.lifespan_state)
        try:
            await lifespan.startup()
        except LifespanError as exc:
            logger.error("application startup failed: %s", exc)
            return EXIT_STARTUP_FAILED

        ssl_ctx = _ssl_context(config)
        # With TLS, the protocol is chosen once the handshake has picked one by ALPN.
        factory = AlpnSelector if ssl_ctx is not None and config.http2 else HttpProtocol
        for sock in sockets:
            server = await loop.create_server(
                lambda: factory(state),
                sock=sock,
                ssl=ssl_ctx,
                backlog=config.limits.backlog,
            )
            self._servers.append(server)
        self._log_listening(sockets)
        self.started = True
        if config.metrics_bind is not None:  # a worker reporting to its supervisor
            from tidings.server._metrics import worker_started

            worker_started(state)
        if self.on_started is not None:
            self.on_started()
        sweeper = loop.create_task(self._sweep(state))
        try:
            await self._stop.wait()
        finally:
            sweeper.cancel()
        await self._shutdown(state)
        await lifespan.shutdown()
        if config.metrics_bind is not None:
            from tidings.server._metrics import worker_stopping

            worker_stopping()
        return 0

    async def _sweep(self, state: ServerState) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            await asyncio.sleep(self.sweep_interval)
            metrics = _metrics.ACTIVE
            if metrics is not None:  # event-loop lag: how late this sleep ended
                lag = metrics.lag_last = max(0.0, loop.time() - started - self.sweep_interval)
                metrics.lag.observe(lag)
                metrics.fold()  # the messages counted since the last sweep, at most
            try:
                state.sweep()
            except Exception:
                logger.exception("error in the connection sweep")

    async def _shutdown(self, state: ServerState) -> None:
        state.closing = True
        state.shutting_down.set()  # streaming responses learn of it now (tidings.shutdown)
        for server in self._servers:
            server.close()
        for conn in list(state.connections):
            conn.shutdown()
        assert self._stop is not None
        self._stop.clear()  # a second signal sets it again: force
        idle = asyncio.ensure_future(state.wait_idle())
        forced = asyncio.ensure_future(self._stop.wait())
        await asyncio.wait(
            {idle, forced},
            timeout=self.config.timeouts.graceful,
            return_when=asyncio.FIRST_COMPLETED,
        )
        idle.cancel()
        forced.cancel()
        if state.connections or state.tasks:
            logger.warning(
                "graceful shutdown: %d connections and %d requests still open; closing them",
                len(state.connections),
                len(state.tasks),
            )
            for conn in list(state.connections):
                conn.abort()
            for task in list(state.tasks):
                task.cancel()
            if state.tasks:
                await asyncio.wait(list(state.tasks), timeout=1.0)

    def _log_listening(self, sockets: list[socket.socket]) -> None:
        scheme = "https" if self.config.is_ssl else "http"
        for sock in sockets:
            name = sock.getsockname()
            if isinstance(name, tuple):
                host = f"[{name[0]}]" if ":" in name[0] else name[0]
                where = f"{scheme}://{host}:{name[1]}"
            else:
                where = f"unix socket {name}"
            logger.info("Tidings serving on %s (pid %d)", where, os.getpid())


def new_event_loop(kind: str) -> asyncio.AbstractEventLoop:
    """An event loop of the requested kind; ``auto`` prefers uvloop when installed."""
    if kind in ("auto", "uvloop"):
        try:
            import uvloop
        except ImportError:
            if kind == "uvloop":
                raise ConfigError("--loop uvloop: uvloop is not installed") from None
        else:
            return cast(asyncio.AbstractEventLoop, uvloop.new_event_loop())
    return asyncio.new_event_loop()


def serve_in_process(
    config: Config,
    sockets: list[socket.socket],
    *,
    on_server: Callable[[Server], None] | None = None,
    install_signal_handlers: bool = True,
) -> int:
    """Import the app and serve it on ``sockets`` in this process until stopped.

    With ``install_signal_handlers=False`` (required off the main thread, where
    Python cannot install them) SIGINT and SIGTERM keep their current handling;
    stop the server with ``server.request_stop()`` through ``on_server``.
    """
    try:
        app = import_app(config.app, factory=config.factory)
    except AppImportError as exc:
        logger.error("%s", exc)
        return EXIT_STARTUP_FAILED
    except Exception:
        logger.exception("error while importing the application %r", config.app)
        return EXIT_STARTUP_FAILED
    loop = new_event_loop(config.loop)
    asyncio.set_event_loop(loop)
    server = Server(config, app)
    if on_server is not None:
        on_server(server)

    first_signal: list[float] = []

    def on_signal(signum: int) -> None:
        name = signal.Signals(signum).name
        now = time.monotonic()
        if first_signal and now - first_signal[0] < SIGNAL_DEBOUNCE:
            # The same stop twice: a signal sent to the whole process group (Ctrl-C,
            # systemd's default KillMode) reaches a worker directly and again through
            # the supervisor. Only a deliberate second signal forces the exit.
            logger.debug("received %s again within %.1f s: ignored", name, SIGNAL_DEBOUNCE)
            return
        if first_signal:
            logger.warning("received %s again: forcing the shutdown", name)
        else:
            first_signal.append(now)
            logger.info("received %s: shutting down", name)
        server.request_stop()

    signals = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP) if install_signal_handlers else ()
    for signum in signals:
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        return loop.run_until_complete(server.serve(sockets))
    finally:
        for signum in signals:
            loop.remove_signal_handler(signum)
        _cancel_all(loop)
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
        asyncio.set_event_loop(None)


def _cancel_all(loop: asyncio.AbstractEventLoop) -> None:
    tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
    for task in tasks:
        task.cancel()
    if tasks:
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))


def _serve_worker(
    config: Config, sockets: list[socket.socket], *, on_started: Callable[[], None] | None
) -> int:
    """What a worker forked by the supervisor runs (a ``ServeWorker``)."""

    def announce(server: Server) -> None:
        server.on_started = on_started

    return serve_in_process(config, sockets, on_server=announce if on_started else None)


def run(config: Config) -> int:
    """Serve ``config.app`` as configured; return the exit status.

    With one worker and no reload this serves in the calling process; otherwise
    a supervisor process forks the workers (and restarts dead ones).
    """
    from tidings.server._logconfig import configure_logging

    configure_logging(config)
    sockets = bind_sockets(config)
    try:
        if config.metrics_bind is not None:  # the supervisor serves them, even for 1 worker
            from tidings.server._metrics import MetricsHub, bind_metrics

            hub = MetricsHub(cast(socket.socket, bind_metrics(config)))
            return Supervisor(config, sockets, serve=_serve_worker, metrics=hub).run()
        if config.workers > 1 or config.reload:
            return Supervisor(config, sockets, serve=_serve_worker).run()
        return serve_in_process(config, sockets)
    finally:
        for sock in sockets:
            sock.close()
        if config.uds is not None:
            try:
                os.unlink(config.uds)
            except OSError:
                pass
