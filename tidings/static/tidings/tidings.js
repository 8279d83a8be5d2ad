/**
 * tidings.js: the browser client of Tidings sessions (wire protocol v1).
 *
 * A plain ES module with no dependencies and no build step:
 *
 *     import { connect } from "/static/tidings/tidings.js";
 *     const conn = connect("/ws/chat/lobby/");
 *     conn.onjson = (msg) => console.log(msg);
 *     conn.sendJSON({ message: "hello" });
 *
 * Theory of operation
 * -------------------
 * A Connection is one *session* with one consumer instance on the server. The
 * session outlives the transport connections that carry it: a WebSocket, an SSE
 * stream (read with fetch(), so that HTTP statuses are visible and the browser's
 * own EventSource reconnection never starts a session behind our back) plus POSTs,
 * or a loop of long-poll GETs plus POSTs. See docs/transports.md for the protocol.
 *
 * - Every server message carries `seq`. `lastSeq` is the last one handed to the
 *   application; anything at or below it is a duplicate and dropped, a jump past
 *   `lastSeq + 1` is a broken stream and reconnects (the resume fills the gap).
 *   Acknowledgements (`{"ack": n}`, or `last=` on the next poll) let the server free
 *   its buffer.
 * - Every client message gets `cseq` and stays in the outbox until the server
 *   acknowledges it: `cack` in an open message, in a POST answer, or alone as
 *   `{"cack": n}` on a WebSocket or SSE stream (within about 200 ms of taking it).
 *   After a resume the rest is sent again; the server drops what it already has.
 * - Reconnection: a transport that fails to open is followed at once by the next
 *   one in `transports`; when a later one opens, the ones that failed are demoted
 *   for `demoteFor` ms (a refusal during a server's restart storm looks the same as
 *   a proxy that blocks WebSockets, so it is tried again later). When all fail (the server is down, not a
 *   transport problem) nothing is demoted and the round starts again after a
 *   jittered exponential backoff. An HTTP 429 or 503 (the server is full) ends the
 *   round at once, and the next one waits at least the `Retry-After` it carries.
 *   A streaming transport that opens and dies within `earlyDeath` ms
 *   `maxEarlyDeaths` times in a row is demoted too (proxies that accept a WebSocket
 *   and then kill it).
 * - The session ends for good on a close message, an HTTP 403 (the consumer refused
 *   it) or another final 4xx, or close(); `state` is then "closed".
 * - A resume answered with `resumed: false` fires "continuitylost": the session is
 *   new, `lastSeq` and `cseq` restart, and the messages not yet acknowledged by the
 *   old session are dropped and listed in the event (the application decides).
 *   Acknowledged ones are not listed: the old session had taken them.
 *
 * Nothing here touches the DOM except `location` (to resolve relative URLs) and the
 * `pagehide`/`online` events of `window`.
 */

const TRANSPORTS = Object.freeze(["websocket", "sse", "longpoll"]);
const STREAMING = new Set(["websocket", "sse"]);

/** Defaults of the connect() options (milliseconds). */
export const DEFAULTS = Object.freeze({
  transports: TRANSPORTS,
  backoff: Object.freeze({ initial: 250, max: 10000, factor: 2, jitter: 0.5 }),
  openTimeout: 5000,
  earlyDeath: 5000,
  maxEarlyDeaths: 3,
  demoteFor: 300000,
  idleTimeout: 45000,
  ackDelay: 200,
  ackEvery: 50,
  maxBatchBytes: 256 * 1024,
  credentials: "same-origin",
  closeOnPageHide: true,
});

// HTTP statuses after which retrying cannot help: the session ends with the status
// as its close code. 408, 425 and 429 are transient, everything else in 4xx is final,
// and so is 501 (the route does not support sessions); other 5xx are transient.
// Among the transient ones, 429 (too many sessions of the user) and 503 (too many
// sessions in the process) refuse the session, not the transport: the next transport
// would be refused too, so the client waits (at least Retry-After) instead (Busy).
const TRANSIENT_4XX = new Set([408, 425, 429]);
const BUSY = new Set([429, 503]);

function isFinalStatus(status) {
  return status === 501 || (status >= 400 && status < 500 && !TRANSIENT_4XX.has(status));
}

/** Connect to a consumer's URL (relative, http(s): or ws(s):) and return a Connection. */
export function connect(url, options = {}) {
  return new Connection(url, options);
}

function reportError(error) {
  if (typeof globalThis.reportError === "function") globalThis.reportError(error);
  else setTimeout(() => { throw error; });
}

// --- payload encoding ---------------------------------------------------------------

function toBase64(bytes) {
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    binary += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  }
  return btoa(binary);
}

function fromBase64(text) {
  const binary = atob(text);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes.buffer;
}

function encodePayload(data) {
  if (typeof data === "string") return { text: data };
  if (data instanceof ArrayBuffer) return { bytes: toBase64(new Uint8Array(data)) };
  if (ArrayBuffer.isView(data)) {
    return { bytes: toBase64(new Uint8Array(data.buffer, data.byteOffset, data.byteLength)) };
  }
  throw new TypeError("tidings: send() takes a string, an ArrayBuffer or a typed array");
}

function decodePayload(msg) {
  return typeof msg.text === "string" ? msg.text : fromBase64(msg.bytes ?? "");
}

function parseJSON(data) {
  return JSON.parse(typeof data === "string" ? data : new TextDecoder().decode(data));
}

// --- events ---------------------------------------------------------------------------

/** A message from the consumer: `data` is a string or an ArrayBuffer. */
export class TidingsMessageEvent extends MessageEvent {
  constructor(data, seq) {
    super("message", { data });
    this.seq = seq;
  }

  /** The message parsed as JSON (bytes are decoded as UTF-8 first). */
  json() {
    return parseJSON(this.data);
  }
}

// A failure that ends the session: the close event carries its code.
class Final {
  constructor(code, reason) {
    this.code = code;
    this.reason = reason;
  }
}

// A refusal for load (HTTP 429 or 503): the round of transports ends, and the next
// one waits at least `retryAfter` seconds (null: the normal backoff).
class Busy {
  constructor(reason, retryAfter) {
    this.reason = reason;
    this.retryAfter = retryAfter;
  }

  toString() {
    return this.reason;
  }
}

// Retry-After in seconds (RFC 9110, section 10.2.3), or null: the HTTP-date form and
// anything else are ignored.
function retryAfterSeconds(response) {
  const value = (response.headers.get("Retry-After") ?? "").trim();
  return /^[0-9]+$/.test(value) ? Number(value) : null;
}

// --- transports -------------------------------------------------------------------------
//
// A transport object carries one transport connection. It calls back into its
// Connection with host._frame(t, msg) for each server message, host._opened(t, msg)
// once it counts as open (msg: the open message, or null for a long-poll whose
// resume was accepted implicitly) and host._died(t, why) once at the end (why: a
// string, a Final or a Busy). The Connection ignores calls from a transport it dropped.

class WebSocketTransport {
  constructor(host, url) {
    this.name = "websocket";
    this.host = host;
    this.dead = false;
    this.ws = new WebSocket(url);
    this.ws.binaryType = "arraybuffer";
    // The server sends a frame at least every sse_heartbeat (15 s), {} when idle:
    // nothing for idleTimeout means a host that vanished without closing.
    this.touch();
    this.ws.onmessage = (event) => {
      this.touch();
      if (typeof event.data !== "string") return this.fail("binary frame");
      let msg;
      try {
        msg = JSON.parse(event.data);
      } catch {
        return this.fail("frame is not JSON");
      }
      this.host._frame(this, msg);
    };
    this.ws.onclose = (event) => this.fail(`websocket closed (${event.code})`);
  }

  touch() {
    clearTimeout(this.idle);
    this.idle = setTimeout(() => this.fail("idle timeout"), this.host._options.idleTimeout);
  }

  push(messages) {
    if (this.dead || this.ws.readyState !== WebSocket.OPEN) return;
    for (const msg of messages) this.ws.send(JSON.stringify(msg));
  }

  ack(seq) {
    this.push([{ ack: seq }]);
    return true;
  }

  fail(why) {
    if (this.dead) return;
    this.stop(1000);
    this.host._died(this, why);
  }

  stop(code = 1000, reason = "") {
    this.dead = true;
    clearTimeout(this.idle);
    this.ws.onmessage = this.ws.onclose = null;
    try {
      this.ws.close(code, reason);
    } catch {
      this.ws.close();
    }
  }
}

// POSTs client messages and acks for the HTTP transports: one request at a time, so
// that the server sees them in order; everything still unacknowledged goes into the
// next body (the server drops cseq values it has).
class HttpSender {
  constructor(transport) {
    this.t = transport;
    this.busy = false;
    this.again = false;
    this.ackSeq = 0;
    this.single = false;
  }

  kick() {
    if (this.busy) this.again = true;
    else this.post();
  }

  async post() {
    const t = this.t;
    const host = t.host;
    this.busy = true;
    this.again = false;
    const body = [];
    let size = 2;
    for (const msg of host._outbox) {
      const length = (msg.text ?? msg.bytes).length + 24;
      if (body.length && (this.single || size + length > host._options.maxBatchBytes)) break;
      body.push(msg);
      size += length;
    }
    if (this.ackSeq) body.push({ ack: this.ackSeq });
    if (!body.length) {
      this.busy = false;
      return;
    }
    const ackSent = this.ackSeq;
    let response;
    try {
      response = await t.fetch("send", { method: "POST", body: JSON.stringify(body) });
    } catch (error) {
      return t.fail(`send failed: ${error}`);
    }
    if (t.dead) return;
    if (response.status === 413 && body.length > 1 && !this.single) {
      this.single = true; // find the one that is too big
    } else if (response.status === 413) {
      return t.fail(new Final(1009, "message too big"));
    } else if (response.status === 404) {
      return t.fail("session unknown to the server"); // the resume will say so
    } else if (response.status === 429) {
      // The consumer's inbox is full: the messages stay in the outbox; try again
      // after Retry-After (the transport itself is fine).
      const wait = (retryAfterSeconds(response) ?? 1) * 1000;
      setTimeout(() => {
        this.busy = false;
        if (!t.dead) this.post();
      }, Math.min(wait, host._options.backoff.max));
      return;
    } else if (!response.ok) {
      return t.fail(t.statusFailure(response, "send"));
    } else {
      let answer = null;
      try {
        answer = await response.json();
      } catch {
        // A 200 without the JSON body still delivered the messages.
      }
      if (t.dead) return;
      if (ackSent === this.ackSeq) this.ackSeq = 0;
      this.single = false;
      if (answer && typeof answer.cack === "number") host._cacked(answer.cack);
      else host._cacked(body.reduce((n, m) => (m.cseq > n ? m.cseq : n), 0));
    }
    this.busy = false;
    if (this.again || host._outbox.length) this.post();
  }
}

class HttpTransport {
  constructor(host, name) {
    this.name = name;
    this.host = host;
    this.dead = false;
    this.abort = new AbortController();
    this.sender = new HttpSender(this);
    this.idle = null;
  }

  fetch(action, init = {}) {
    const host = this.host;
    const url = host._url("http", action);
    return fetch(url, {
      cache: "no-store",
      credentials: host._options.credentials,
      signal: this.abort.signal,
      ...init,
      headers: {
        // Only this client sends it: a cross-site page cannot without a CORS
        // preflight, which tells an old browser's request from a forged one.
        "X-Tidings": "1",
        ...(init.method === "POST" ? { "Content-Type": "application/json" } : {}),
        ...(init.headers ?? {}),
      },
    });
  }

  statusFailure(response, what) {
    const status = response.status;
    const reason = `${what}: HTTP ${status}`;
    if (isFinalStatus(status)) return new Final(status, reason);
    if (BUSY.has(status)) return new Busy(reason, retryAfterSeconds(response));
    return reason;
  }

  // Dies when nothing arrives for idleTimeout (a half-open TCP connection).
  touch() {
    clearTimeout(this.idle);
    this.idle = setTimeout(() => this.fail("idle timeout"), this.host._options.idleTimeout);
  }

  push() {
    if (!this.dead && this.host._sid) this.sender.kick();
  }

  fail(why) {
    if (this.dead) return;
    this.stop();
    this.host._died(this, why);
  }

  stop() {
    this.dead = true;
    clearTimeout(this.idle);
    this.abort.abort();
  }
}

// Server-Sent Events read from a fetch() body: the event stream format of the HTML
// standard (section 9.2.6): lines end in CRLF, LF or CR; "data" lines of one event
// are joined with LF; lines starting with ":" are comments (heartbeats); an empty line
// dispatches the event.
class SSETransport extends HttpTransport {
  constructor(host) {
    super(host, "sse");
    this.run();
  }

  ack(seq) {
    this.sender.ackSeq = seq;
    this.push();
    return true;
  }

  async run() {
    let response;
    this.touch();
    try {
      response = await this.fetch("sse", { headers: { Accept: "text/event-stream" } });
    } catch (error) {
      return this.fail(`sse: ${error}`);
    }
    if (this.dead) return;
    const type = response.headers.get("Content-Type") ?? "";
    if (!response.ok) return this.fail(this.statusFailure(response, "sse"));
    if (!type.startsWith("text/event-stream")) return this.fail(`sse: content type ${type}`);
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    let data = [];
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (this.dead) return;
        if (done) return this.fail("sse stream ended");
        this.touch();
        buffer += value;
        let end;
        while ((end = buffer.search(/\r\n|\r|\n/)) >= 0) {
          // A CR at the very end may be the first half of a CRLF: wait for more.
          if (buffer[end] === "\r" && end === buffer.length - 1) break;
          const line = buffer.slice(0, end);
          buffer = buffer.slice(end + (buffer.startsWith("\r\n", end) ? 2 : 1));
          if (line === "") {
            if (data.length) this.event(data.join("\n"));
            data = [];
            if (this.dead) return;
          } else if (line.startsWith("data:")) {
            data.push(line.slice(line.startsWith("data: ") ? 6 : 5));
          } else if (line === "data") {
            data.push("");
          } // "id", "event", "retry" and comments: nothing to do
        }
      }
    } catch (error) {
      if (!this.dead) this.fail(`sse: ${error}`);
    }
  }

  event(data) {
    let msg;
    try {
      msg = JSON.parse(data);
    } catch {
      return this.fail("sse event is not JSON");
    }
    this.host._frame(this, msg);
  }
}

// Long-polling: a loop of GETs, each carrying last= (which acknowledges) and answered
// with an array that starts with an open message. Only the first poll of a new
// session is answered at once; a resumed session's poll is held until a message
// comes, so a poll still pending after LONGPOLL_SETTLE ms (a refused or failed one
// is answered at once) counts as an accepted resume.
const LONGPOLL_SETTLE = 1000;
class LongPollTransport extends HttpTransport {
  constructor(host) {
    super(host, "longpoll");
    this.opened = false;
    this.loop();
  }

  ack() {
    return true; // the next poll's last= does it
  }

  async loop() {
    let implicit = null;
    if (this.host._sid) {
      implicit = setTimeout(() => {
        if (!this.dead && !this.opened) {
          this.opened = true;
          this.host._opened(this, null);
        }
      }, Math.min(LONGPOLL_SETTLE, this.host._options.openTimeout / 2));
    }
    try {
      while (!this.dead) {
        this.touch();
        let response;
        let batch;
        try {
          response = await this.fetch("poll");
          if (this.dead) return;
          if (!response.ok) return this.fail(this.statusFailure(response, "poll"));
          batch = await response.json();
        } catch (error) {
          return this.fail(`poll: ${error}`);
        }
        if (this.dead) return;
        if (!Array.isArray(batch)) return this.fail("poll answer is not an array");
        if (!this.opened && !(batch.length && batch[0].type === "open")) {
          this.opened = true;
          this.host._opened(this, null);
        }
        for (const msg of batch) {
          this.host._frame(this, msg);
          if (this.dead) return;
        }
      }
    } finally {
      clearTimeout(implicit);
    }
  }
}

const FACTORIES = {
  websocket: (host) => new WebSocketTransport(host, host._url("ws", "ws")),
  sse: (host) => new SSETransport(host),
  longpoll: (host) => new LongPollTransport(host),
};

// --- the connection -----------------------------------------------------------------

const EVENT_TYPES = ["open", "message", "reconnecting", "close", "transport", "continuitylost"];

/** One session with a consumer; see the module comment. */
export class Connection extends EventTarget {
  constructor(url, options = {}) {
    super();
    const base = globalThis.location?.href;
    this.url = new URL(url, base).href;
    const backoff = { ...DEFAULTS.backoff, ...(options.backoff ?? {}) };
    this._options = { ...DEFAULTS, ...options, backoff };
    const order = [...new Set(this._options.transports)];
    if (!order.length || order.some((name) => !TRANSPORTS.includes(name))) {
      throw new TypeError(`tidings: transports must be a non-empty list of ${TRANSPORTS}`);
    }
    this._order = order;
    this._state = "connecting";
    this._sid = null;
    this._last = 0; // last seq delivered to the application
    this._acked = 0; // last seq acknowledged to the server
    this._cseq = 0; // last cseq given to a client message
    this._outbox = []; // client messages not yet acknowledged by the server
    this._transport = null; // the transport object in use or being opened
    this._active = null; // name of the open transport
    this._lastActive = null;
    this._demoted = new Map(); // transport name -> when it was demoted (Date.now())
    this._failedThisRound = [];
    this._earlyDeaths = new Map();
    this._attempt = 0;
    this._openedAt = 0;
    this._timers = { open: null, retry: null, ack: null };
    this._handlers = {};
    this._onjson = null;
    this.stats = { openFailures: 0, reconnects: 0, duplicates: 0, received: 0, sent: 0 };
    for (const type of EVENT_TYPES) {
      this.addEventListener(type, (event) => {
        const handler = this._handlers[type];
        if (typeof handler === "function") handler.call(this, event);
      });
    }
    this.addEventListener("message", (event) => {
      if (typeof this._onjson === "function") this._onjson.call(this, event.json(), event);
    });
    this._listeners = {
      pagehide: (event) => {
        if (!event.persisted && this._options.closeOnPageHide) this.close(1001, "page left");
      },
      online: () => {
        if (this._timers.retry !== null) this._retryNow();
      },
    };
    if (typeof globalThis.addEventListener === "function") {
      for (const [type, fn] of Object.entries(this._listeners)) {
        globalThis.addEventListener(type, fn);
      }
    }
    this._start(this._firstIndex());
  }

  get state() { return this._state; }
  get transport() { return this._state === "open" ? this._active : null; }
  get sessionId() { return this._sid; }
  get lastSeq() { return this._last; }
  get pending() { return this._outbox.length; }
  get onjson() { return this._onjson; }
  set onjson(fn) { this._onjson = fn; }

  /** Send a string, or bytes (ArrayBuffer or typed array), to the consumer. */
  send(data) {
    if (this._state === "closed") throw new Error("tidings: send() on a closed connection");
    const msg = { cseq: ++this._cseq, ...encodePayload(data) };
    this._outbox.push(msg);
    this.stats.sent++;
    if (this._state === "open") this._transport.push([msg]);
  }

  /** Send a value as JSON text. */
  sendJSON(value) {
    this.send(JSON.stringify(value));
  }

  /** End the session (the consumer gets disconnect with 1000); idempotent. */
  close(code = 1000, reason = "") {
    if (this._state === "closed") return;
    const sid = this._sid;
    const t = this._transport;
    if (this._state === "open" && t.name === "websocket" && t.ws.readyState === WebSocket.OPEN) {
      t.push([{ type: "close" }]); // the session ends with the WebSocket
    } else if (sid) {
      this._requestClose(sid);
    }
    this._drop(code, reason);
    this._finish(code, reason, true);
  }

  // --- internals (the transports call the _ methods below) ---------------------------

  _url(kind, action) {
    const url = new URL(this.url);
    if (kind === "ws") url.protocol = url.protocol.replace(/^http/, "ws");
    else url.protocol = url.protocol.replace(/^ws/, "http");
    url.searchParams.set("tidings", action);
    if (this._sid) {
      url.searchParams.set("sid", this._sid);
      if (action !== "send") url.searchParams.set("last", String(this._last));
    }
    return url.href;
  }

  // Demoted, and not for longer than demoteFor: then it is tried again (and one more
  // early death demotes it again at once: the count of early deaths is kept).
  _isDemoted(name) {
    const since = this._demoted.get(name);
    if (since === undefined) return false;
    if (Date.now() - since < this._options.demoteFor) return true;
    this._demoted.delete(name);
    return false;
  }

  _firstIndex() {
    const i = this._order.findIndex((name) => !this._isDemoted(name));
    return i < 0 ? this._order.length - 1 : i;
  }

  _nextIndex(from) {
    for (let i = from + 1; i < this._order.length; i++) {
      if (!this._isDemoted(this._order[i])) return i;
    }
    return -1;
  }

  _start(index) {
    this._index = index;
    const name = this._order[index];
    this._transport = FACTORIES[name](this);
    const t = this._transport;
    this._timers.open = setTimeout(() => {
      if (t === this._transport && this._state !== "open") t.fail("open timeout");
    }, this._options.openTimeout);
  }

  _opened(t, msg) {
    if (t !== this._transport || this._state === "open") return;
    if (msg !== null && (typeof msg.sid !== "string" || !msg.sid)) {
      return t.fail("open message without a session id");
    }
    clearTimeout(this._timers.open);
    this._timers.open = null;
    for (const name of this._failedThisRound) {
      if (name !== t.name) this._demoted.set(name, Date.now());
    }
    this._failedThisRound = [];
    this._openedAt = Date.now();
    const previousSid = this._sid;
    let lost = null;
    if (msg === null) {
      // Implicit long-poll resume: cack unknown, resend everything unacknowledged.
    } else if (previousSid !== null && msg.resumed !== true) {
      lost = {
        previousSessionId: previousSid,
        sessionId: msg.sid,
        lastSeq: this._last,
        unsent: this._outbox.map(decodePayload),
      };
      this._last = this._acked = this._cseq = 0;
      this._outbox = [];
    } else if (typeof msg.cack === "number") {
      this._dropAcked(msg.cack);
    }
    if (msg !== null) this._sid = msg.sid;
    this._state = "open";
    this._active = t.name;
    if (lost) this.dispatchEvent(new CustomEvent("continuitylost", { detail: lost }));
    if (this._state !== "open" || t !== this._transport) return; // closed by a listener
    if (this._lastActive !== t.name) {
      const detail = { transport: t.name, previous: this._lastActive };
      this._lastActive = t.name;
      this.dispatchEvent(new CustomEvent("transport", { detail }));
      if (this._state !== "open" || t !== this._transport) return;
    }
    const resumed = msg === null || (previousSid !== null && msg.resumed === true);
    const detail = { transport: t.name, sessionId: this._sid, resumed };
    this.dispatchEvent(new CustomEvent("open", { detail }));
    if (this._state === "open" && t === this._transport && this._outbox.length) {
      t.push(this._outbox);
    }
  }

  _frame(t, msg) {
    if (t !== this._transport || msg === null || typeof msg !== "object") return;
    if (msg.type === "open") {
      if (this._state !== "open") return this._opened(t, msg);
      // A later open on the same transport (a poll answer): same session, or a lost one.
      if (msg.sid !== this._sid || msg.resumed === false) {
        this._state = "connecting";
        return this._opened(t, msg);
      }
      if (typeof msg.cack === "number") this._dropAcked(msg.cack);
      return;
    }
    if (msg.type === "close") {
      const code = typeof msg.code === "number" ? msg.code : 1000;
      this._drop(1000, "");
      this._finish(code, typeof msg.reason === "string" ? msg.reason : "", true);
      return;
    }
    if (this._state !== "open") return t.fail("message before open");
    if (typeof msg.cack === "number" && typeof msg.seq !== "number") {
      return this._dropAcked(msg.cack); // {"cack": n} on a stream: no seq, nothing to deliver
    }
    if (typeof msg.seq !== "number") return;
    if (msg.seq <= this._last) {
      this.stats.duplicates++;
      return;
    }
    if (msg.seq !== this._last + 1) return t.fail(`gap: seq ${msg.seq} after ${this._last}`);
    this._last = msg.seq;
    this.stats.received++;
    this._scheduleAck();
    this.dispatchEvent(new TidingsMessageEvent(decodePayload(msg), msg.seq));
  }

  _dropAcked(cack) {
    let n = 0;
    while (n < this._outbox.length && this._outbox[n].cseq <= cack) n++;
    if (n) this._outbox.splice(0, n);
  }

  _cacked(cack) {
    this._dropAcked(cack);
  }

  _scheduleAck() {
    const due = this._last - this._acked >= this._options.ackEvery;
    if (due) return this._sendAck();
    if (this._timers.ack === null) {
      this._timers.ack = setTimeout(() => this._sendAck(), this._options.ackDelay);
    }
  }

  _sendAck() {
    clearTimeout(this._timers.ack);
    this._timers.ack = null;
    if (this._state !== "open" || this._last <= this._acked) return;
    if (this._transport.ack(this._last)) this._acked = this._last;
  }

  _died(t, why) {
    if (t !== this._transport) return;
    clearTimeout(this._timers.open);
    clearTimeout(this._timers.ack);
    this._timers.open = this._timers.ack = null;
    this._transport = null;
    if (why instanceof Final) return this._finish(why.code, why.reason, false);
    const wasOpen = this._state === "open";
    this._active = null;
    let delay;
    let index;
    if (!wasOpen) {
      // Failed to open: the next transport at once; after the last, or when the
      // server is full (Busy), back off.
      this.stats.openFailures++;
      if (!(why instanceof Busy)) {
        this._failedThisRound.push(t.name);
        const next = this._nextIndex(this._index);
        if (next >= 0) return this._start(next);
      }
      this._failedThisRound = [];
      index = this._firstIndex();
      delay = why instanceof Busy ? this._busyDelay(why.retryAfter) : this._backoff();
    } else {
      const early = Date.now() - this._openedAt < this._options.earlyDeath;
      const deaths = early ? (this._earlyDeaths.get(t.name) ?? 0) + 1 : 0;
      this._earlyDeaths.set(t.name, deaths);
      if (
        early && STREAMING.has(t.name) && deaths >= this._options.maxEarlyDeaths &&
        this._nextIndex(this._index) >= 0
      ) {
        this._demoted.set(t.name, Date.now());
      }
      index = this._firstIndex();
      if (early) delay = this._backoff();
      else {
        this._attempt = 0;
        delay = Math.random() * this._options.backoff.initial;
      }
    }
    this._acked = Math.min(this._acked, this._last);
    this.stats.reconnects++;
    this._state = "reconnecting";
    this._retryIndex = index;
    this._timers.retry = setTimeout(() => this._retryNow(), delay);
    const detail = { delay, transport: this._order[index], reason: String(why) };
    this.dispatchEvent(new CustomEvent("reconnecting", { detail }));
  }

  _retryNow() {
    clearTimeout(this._timers.retry);
    this._timers.retry = null;
    if (this._state === "reconnecting" && this._transport === null) {
      this._start(this._retryIndex);
    }
  }

  _backoff() {
    const { initial, max, factor, jitter } = this._options.backoff;
    const base = Math.min(max, initial * factor ** this._attempt++);
    return base * (1 - jitter * Math.random());
  }

  // The backoff, but at least Retry-After: jittered upwards by up to `jitter` of it,
  // so that the clients refused together do not come back together. The cap still
  // wins: a Retry-After at or past backoff.max waits the max, jittered as usual.
  _busyDelay(retryAfter) {
    const normal = this._backoff();
    if (retryAfter === null) return normal;
    const { max, jitter } = this._options.backoff;
    const wait = retryAfter * 1000;
    const spread = wait >= max
      ? max * (1 - jitter * Math.random())
      : Math.min(max, wait * (1 + jitter * Math.random()));
    return Math.max(normal, spread);
  }

  // Stop everything without events.
  _drop(code, reason) {
    for (const key of Object.keys(this._timers)) {
      clearTimeout(this._timers[key]);
      this._timers[key] = null;
    }
    const t = this._transport;
    this._transport = null;
    if (t) t.stop(code === 1000 || (code >= 3000 && code < 5000) ? code : 1000, reason);
  }

  _finish(code, reason, wasClean) {
    this._drop(1000, "");
    this._state = "closed";
    this._active = null;
    this._sid = null;
    if (typeof globalThis.removeEventListener === "function") {
      for (const [type, fn] of Object.entries(this._listeners)) {
        globalThis.removeEventListener(type, fn);
      }
    }
    this.dispatchEvent(new CloseEvent("close", { code, reason, wasClean }));
  }

  _requestClose(sid) {
    const url = new URL(this.url);
    url.protocol = url.protocol.replace(/^ws/, "http");
    url.searchParams.set("tidings", "close");
    url.searchParams.set("sid", sid);
    // keepalive: the request outlives the page when close() runs in pagehide.
    fetch(url.href, {
      method: "POST",
      keepalive: true,
      credentials: this._options.credentials,
    }).catch(() => {});
  }
}

for (const type of EVENT_TYPES) {
  Object.defineProperty(Connection.prototype, `on${type}`, {
    get() { return this._handlers[type] ?? null; },
    set(fn) { this._handlers[type] = fn; },
    configurable: true,
  });
}

// --- presence -------------------------------------------------------------------------

// What the consumer's presence messages start with (compact JSON, "type" first): a
// cheap test before parsing every message of the connection a second time.
const PRESENCE_PREFIX = '{"type":"presence.';

/**
 * The members of one presence topic, kept from the consumer's `presence.state` and
 * `presence.diff` messages (a consumer with AsyncPresenceMixin sends them after
 * `presence_subscribe(topic)`; see docs/operations.md). It reads the connection's
 * messages, so it works over every transport, and a new session's `presence.state`
 * (after "continuitylost") replaces the list.
 *
 * Events: "join" and "leave" once per key changed ({key, current, joined|left}),
 * then "sync" ({state}) once per message.
 */
export class Presence extends EventTarget {
  constructor(connection, topic) {
    super();
    this.connection = connection;
    this.topic = topic;
    this._members = new Map(); // key -> metas
    this._listener = (event) => {
      if (typeof event.data !== "string" || !event.data.startsWith(PRESENCE_PREFIX)) return;
      const msg = parseJSON(event.data);
      if (msg.topic !== this.topic) return;
      if (msg.type === "presence.state") this._replace(msg.state ?? {});
      else if (msg.type === "presence.diff") this._apply(msg.joins ?? {}, msg.leaves ?? {});
      else return;
      this.dispatchEvent(new CustomEvent("sync", { detail: { state: this.list() } }));
    };
    connection.addEventListener("message", this._listener);
  }

  /** The members now: `{key: {metas: [...]}}`, as the server's `presence.list()`. */
  list() {
    const state = {};
    for (const [key, metas] of this._members) state[key] = { metas: [...metas] };
    return state;
  }

  /** Stop following the connection's messages. */
  close() {
    this.connection.removeEventListener("message", this._listener);
  }

  _replace(state) {
    const joins = {};
    const leaves = {};
    for (const [key, metas] of this._members) {
      const now = new Set((state[key]?.metas ?? []).map((meta) => meta.ref));
      const gone = metas.filter((meta) => !now.has(meta.ref));
      if (gone.length) leaves[key] = { metas: gone };
    }
    for (const [key, entry] of Object.entries(state)) {
      const had = new Set((this._members.get(key) ?? []).map((meta) => meta.ref));
      const added = entry.metas.filter((meta) => !had.has(meta.ref));
      if (added.length) joins[key] = { metas: added };
    }
    this._apply(joins, leaves);
  }

  // Joins first, then leaves: refs are unique per track, so the order is always right.
  // Idempotent: a diff may repeat what the state it follows already holds.
  _apply(joins, leaves) {
    for (const [key, { metas }] of Object.entries(joins)) {
      const had = new Set((this._members.get(key) ?? []).map((meta) => meta.ref));
      const joined = metas.filter((meta) => !had.has(meta.ref));
      if (!joined.length) continue;
      const current = [...(this._members.get(key) ?? []), ...joined];
      this._members.set(key, current);
      this.dispatchEvent(new CustomEvent("join", { detail: { key, current, joined } }));
    }
    for (const [key, { metas }] of Object.entries(leaves)) {
      const refs = new Set(metas.map((meta) => meta.ref));
      const before = this._members.get(key) ?? [];
      const left = before.filter((meta) => refs.has(meta.ref));
      if (!left.length) continue;
      const current = before.filter((meta) => !refs.has(meta.ref));
      if (current.length) this._members.set(key, current);
      else this._members.delete(key);
      this.dispatchEvent(new CustomEvent("leave", { detail: { key, current, left } }));
    }
  }
}

/** Follow the members of `topic` on `connection` (see Presence). */
export function presence(connection, topic) {
  return new Presence(connection, topic);
}
