"""The sessions of one process: ids, users, limits, and the way to other processes.

Theory of operation
-------------------
A :class:`SessionManager` belongs to one ``TransportRouter`` in one event
loop. It keeps this process's sessions by *token* (192 random bits from
:mod:`secrets`, URL-safe base64) and gives each the id
``"<token>.<port>"``, where the port is the manager's process-local channel
of the channel layer. From a session id alone any process can tell which one
owns the session.

**Signed ids.** A session id is ``"<token>.<mac>.<port>"``: ``mac`` is an
HMAC-SHA256 of token and port (128 bits kept) with a key derived from
Django's ``SECRET_KEY``, so every process of a deployment can check an id
and nobody else can make one. :func:`parse_sid` refuses an id whose ``mac``
is wrong before anything else happens: a forged id never reaches the layer
(a made-up port could otherwise name any channel). The token still decides
which session it is, and the owner (user, or browser key of an anonymous
session) who may use it.

:meth:`SessionManager.open` serves the requests that attach a transport
(``ws``, ``sse``, ``poll``): resume the session named by ``sid`` if it is
this process's, its user is the requester's (``str(user.pk)``, ``None`` for
anonymous on both sides) and the messages after ``last`` are still buffered;
ask the owning process the same through the layer if it is another's; else
open a new session (``resumed: false``), unless the user already has
``max_sessions_per_user`` (429) or the process already holds ``max_sessions``
sessions (503; every session in :attr:`SessionManager.sessions` counts, from
its opening until it is removed, so a resume is never refused), or the
client address opens sessions faster than ``client_open_rate`` (429, see
:mod:`~tidings.transports._limiter`).
:meth:`SessionManager.find` serves ``send`` and ``close``: a :class:`Link` to
the session, local or remote.

With no channel layer (``CHANNEL_LAYERS = {}``) the port is a made-up name
and sessions of other processes are unknown. A session of this process never
costs a layer round trip.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import logging
import re
import secrets
from dataclasses import dataclass
from typing import Final, Protocol

from django.utils.crypto import salted_hmac

from tidings import _metrics
from tidings._types import ASGIApp, Scope
from tidings.layers import get_channel_layer
from tidings.transports._limiter import OpenLimiter, client_address
from tidings.transports._protocol import CACK_TRANSPORTS, ClientMessage, open_envelope
from tidings.transports._remote import RemoteHub, RemoteLink
from tidings.transports._request import is_anonymous
from tidings.transports._session import Attachment, Decision, Session
from tidings.transports.config import TransportSettings

__all__ = [
    "DECISION_TIMEOUT",
    "SHUTDOWN_GRACE",
    "Link",
    "LocalLink",
    "Opening",
    "SessionManager",
    "make_sid",
    "parse_sid",
]

logger = logging.getLogger("tidings.transports")

#: Seconds consumers get to handle their 1001 disconnect when the server stops.
SHUTDOWN_GRACE: Final = 5.0
#: Seconds a new session's consumer has to accept or refuse (the WebSocket
#: server's default handshake timeout is 10 s too); then 503.
DECISION_TIMEOUT: Final = 10.0

ACCEPTED: Final = Decision(accepted=True)

#: Seconds between two warnings about sessions refused over ``max_sessions``
#: (the server logs its 503 over --max-connections at most once a second too).
_REFUSAL_LOG_INTERVAL: Final = 1.0

_TOKEN_BYTES: Final = 24  # 192 bits
_SID_RE: Final = re.compile(
    r"([A-Za-z0-9_-]{32})\.([A-Za-z0-9_-]{22})\.([A-Za-z0-9._-]+![A-Za-z0-9._-]*)"
)
_PORT_PREFIX: Final = "tidings-sessions"
_SID_SALT: Final = "tidings.transports._session-id"


def _mac(token: str, port: str) -> str:
    digest = salted_hmac(_SID_SALT, f"{token}.{port}", algorithm="sha256").digest()
    return base64.urlsafe_b64encode(digest[:16]).decode("ascii").rstrip("=")


def make_sid(token: str, port: str) -> str:
    """The signed session id of ``token`` owned by the process reading ``port``."""
    return f"{token}.{_mac(token, port)}.{port}"


def parse_sid(sid: str) -> tuple[str, str] | None:
    """Split a session id into ``(token, port)``; ``None`` if malformed or not signed by us."""
    match = _SID_RE.fullmatch(sid) if len(sid) < 200 else None
    if match is None or not hmac.compare_digest(match[2], _mac(match[1], match[3])):
        return None
    return match[1], match[3]


class Link(Protocol):
    """What ``send`` and ``close`` requests (and WebSocket frames) do to a session."""

    async def push(
        self, messages: list[ClientMessage], *, answered: bool = False, wait: bool = True
    ) -> int | None:
        """Queue messages for the consumer; ``cack``, or ``None`` if the session is unknown.

        ``answered``: the caller tells the client ``cack``; ``wait=False``:
        raise :class:`~tidings.transports._inbox.InboxFull` instead of waiting
        for room (see :meth:`Inbox.push`).
        """

    async def ack(self, seq: int) -> None:
        """Acknowledge envelopes up to ``seq``."""

    async def close(self) -> bool:
        """End the session; ``False`` if it is unknown."""

    def full(self) -> bool:
        """Whether the session surely takes no client message now (a local check only)."""


class LocalLink:
    """A :class:`Link` to a session of this process."""

    def __init__(self, session: Session) -> None:
        self.session = session

    async def push(
        self, messages: list[ClientMessage], *, answered: bool = False, wait: bool = True
    ) -> int | None:
        """Queue messages for the consumer; ``cack``, or ``None`` if the session is gone."""
        session = self.session
        if session.gone:
            return None
        session.touch()
        return await session.push(messages, answered=answered, wait=wait)

    def full(self) -> bool:
        """Whether the consumer's inbox takes no more client messages now."""
        return self.session.inbox.full()

    async def ack(self, seq: int) -> None:
        """Acknowledge envelopes up to ``seq``."""
        self.session.ack(seq)
        self.session.touch()

    async def close(self) -> bool:
        """End the session; ``False`` if it is already gone."""
        if self.session.gone:
            return False
        self.session.close_by_client()
        return True


@dataclass(frozen=True, slots=True)
class Opening:
    """The outcome of :meth:`SessionManager.open`.

    ``status`` is 200; or 429 (too many sessions of the user, or opened by
    the client address: ``retry_after`` is set then) or 503 (too many
    sessions in the process), and nothing else is set then. ``session``
    is the new session whose consumer has yet to decide, ``None`` on a resume.
    """

    status: int
    sid: str = ""
    retry_after: int | None = None
    resumed: bool = False
    seq: int = 0
    cack: int = 0
    attachment: Attachment | None = None
    link: Link | None = None
    session: Session | None = None

    async def decision(self) -> Decision:
        """Wait for a new session's consumer to accept or refuse (at most ``DECISION_TIMEOUT``).

        A resumed session was accepted long ago. A consumer that does not
        decide in time loses its session (503).
        """
        session = self.session
        if session is None:
            return ACCEPTED
        try:
            async with asyncio.timeout(DECISION_TIMEOUT):
                return await asyncio.shield(session.decision)
        except TimeoutError:
            session.abandon()
            return session.decision.result()

    def envelope(self, transport: str) -> str:
        """The open envelope for a connection of ``transport``."""
        return open_envelope(
            self.sid, seq=self.seq, resumed=self.resumed, cack=self.cack, transport=transport
        )


class SessionManager:
    """This process's sessions for one router (see the module docstring)."""

    def __init__(self, settings: TransportSettings, handle_key: str) -> None:
        self.settings = settings
        self.loop = asyncio.get_running_loop()
        self.port = ""
        self.sessions: dict[str, Session] = {}
        self._handle_key = handle_key
        self._per_user: dict[str, int] = {}
        self._counted: set[str] = set()
        self._hub: RemoteHub | None = None
        self._ready: asyncio.Future[None] | None = None
        self._consumers: set[asyncio.Task[None]] = set()
        self._refused = 0  # new sessions refused over max_sessions since the last warning
        self._refused_logged_at = -_REFUSAL_LOG_INTERVAL
        self._limiter = OpenLimiter(settings.client_open_rate, settings.client_open_burst)

    async def start(self) -> None:
        """Open the port on the channel layer (once; concurrent callers wait).

        Raises:
            InvalidChannelLayerError: the channel layer setting is wrong (the
                next request tries again).
        """
        if self._ready is None:
            ready = self._ready = self.loop.create_future()
            try:
                layer = get_channel_layer(self.settings.channel_layer_alias)
                if layer is None:
                    self.port = f"{_PORT_PREFIX}.{secrets.token_hex(8)}!"
                else:
                    self.port = await layer.new_channel(_PORT_PREFIX)
                    self._hub = RemoteHub(
                        layer, self.port, timeout=self.settings.remote_timeout, sessions=self
                    )
                    self._hub.start()
            except BaseException as exc:
                self._ready = None
                ready.set_exception(exc)
                ready.exception()  # retrieved: every waiting caller raises it
                raise
            ready.set_result(None)
        await asyncio.shield(self._ready)

    async def aclose(self) -> None:
        """End every session (consumers get 1001) and stop the layer tasks."""
        sessions = list(self.sessions.values())
        if sessions:
            logger.info("Ending %d transport sessions (server shutdown)", len(sessions))
        await asyncio.gather(*(s.shutdown(SHUTDOWN_GRACE) for s in sessions))
        # Consumers of sessions that already ended but never returned.
        for task in list(self._consumers):
            task.cancel()
        await asyncio.gather(*self._consumers, return_exceptions=True)
        if self._hub is not None:
            await self._hub.aclose()

    # -- lookups --------------------------------------------------------------------------

    def lookup(self, token: str, user: str | None) -> Session | None:
        """The live session of this process with ``token``, if ``user`` owns it."""
        session = self.sessions.get(token)
        if session is None or session.gone:
            return None
        if user is None or session.user_key != user:
            # Info, not warning: anyone can make a line like this per request.
            logger.info("Session %s was requested by another owner; refused", session.label)
            return None
        return session

    def find(self, sid: str, user: str | None) -> Link | None:
        """A link to the session ``sid`` for ``send``/``close``; ``None`` if surely unknown."""
        parsed = parse_sid(sid)
        if parsed is None:
            return None
        token, port = parsed
        if port == self.port:
            session = self.lookup(token, user)
            return None if session is None else LocalLink(session)
        if self._hub is None:
            return None
        return RemoteLink(self._hub, port, token, user)

    # -- opening --------------------------------------------------------------------------

    async def open(
        self,
        *,
        sid: str | None,
        last: int,
        app: ASGIApp,
        scope: Scope,
        user: str | None,
        transport: str,
    ) -> Opening:
        """Resume ``sid`` from ``last`` or open a new session running ``app``.

        ``transport`` (``"websocket"``, ``"sse"``, ``"longpoll"``) decides
        whether the attachment carries ``{"cack": n}`` envelopes.
        """
        cacks = transport in CACK_TRANSPORTS
        if sid is not None:
            resumed = await self._resume(sid, last, user, cacks)
            if resumed is not None:
                if (m := _metrics.ACTIVE) is not None:
                    m.sessions["resumed"] += 1
                return resumed
            logger.info(
                "Session %s could not be resumed (unknown, expired, another user's, or "
                "past its buffer); opening a new one",
                sid[:6],
            )
        return self._new(app, scope, user, cacks)

    async def _resume(self, sid: str, last: int, user: str | None, cacks: bool) -> Opening | None:
        parsed = parse_sid(sid)
        if parsed is None:
            return None
        token, port = parsed
        if port == self.port:
            session = self.lookup(token, user)
            attachment = None if session is None else session.attach(last, cacks=cacks)
            if session is None or attachment is None:
                return None
            return Opening(
                200,
                sid,
                resumed=True,
                seq=session.seq,
                cack=session.cack,
                attachment=attachment,
                link=LocalLink(session),
            )
        if self._hub is None:
            return None
        remote = await self._hub.attach(port, token, user, last, cacks=cacks)
        if remote is None:
            return None
        stream, seq, cack = remote
        link = RemoteLink(self._hub, port, token, user)
        return Opening(200, sid, resumed=True, seq=seq, cack=cack, attachment=stream, link=link)

    def _new(self, app: ASGIApp, scope: Scope, user: str | None, cacks: bool) -> Opening:
        limit = self.settings.max_sessions_per_user
        counted = user is not None and not is_anonymous(user)
        if counted and user is not None and self._per_user.get(user, 0) >= limit:
            _metrics.hit("max_sessions_per_user")
            self._log_refusal(429, f"user {user} holds {limit} (max_sessions_per_user)")
            return Opening(429, retry_after=1)
        if len(self.sessions) >= self.settings.max_sessions:
            limit = self.settings.max_sessions
            _metrics.hit("max_sessions")
            self._log_refusal(503, f"this process holds {limit} (max_sessions)")
            return Opening(503)
        client = client_address(scope.get("client"))
        if not self._limiter.allow(client, self.loop.time()):
            _metrics.hit("client_open_rate")
            self._log_refusal(429, f"client {client} opens too many (client_open_rate)")
            return Opening(429, retry_after=self._limiter.retry_after())
        token = secrets.token_urlsafe(_TOKEN_BYTES)
        sid = make_sid(token, self.port)
        session = Session(token=token, sid=sid, user_key=user, settings=self.settings, owner=self)
        self.sessions[token] = session
        if counted and user is not None:
            self._per_user[user] = self._per_user.get(user, 0) + 1
            self._counted.add(token)
        consumer_scope = dict(scope)
        consumer_scope.pop(self._handle_key, None)
        session.start(app, consumer_scope)
        assert session.task is not None
        self._consumers.add(session.task)
        session.task.add_done_callback(self._consumers.discard)
        attachment = session.attach(0, cacks=cacks)
        assert attachment is not None
        logger.debug("Session %s opened over %s", session.label, scope.get("transport"))
        if (m := _metrics.ACTIVE) is not None:
            m.sessions["opened"] += 1
        return Opening(200, sid, attachment=attachment, link=LocalLink(session), session=session)

    def _log_refusal(self, status: int, why: str) -> None:
        # One line a second at most (429s and 503s together): a flood of refusals,
        # one user's included, must not flood the log.
        self._refused += 1
        now = self.loop.time()
        if now - self._refused_logged_at >= _REFUSAL_LOG_INTERVAL:
            logger.warning(
                "Refused %d new session(s), the last with %d: %s sessions",
                self._refused,
                status,
                why,
            )
            self._refused = 0
            self._refused_logged_at = now

    # -- told by sessions -----------------------------------------------------------------

    def session_finished(self, session: Session) -> None:
        """A session's consumer is done with it: it no longer counts for its user."""
        if session.token in self._counted and session.user_key is not None:
            self._counted.discard(session.token)
            left = self._per_user.get(session.user_key, 1) - 1
            if left:
                self._per_user[session.user_key] = left
            else:
                self._per_user.pop(session.user_key, None)

    def session_gone(self, session: Session) -> None:
        """A session was removed."""
        self.session_finished(session)
        if self.sessions.get(session.token) is session:
            del self.sessions[session.token]
