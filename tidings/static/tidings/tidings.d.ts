// TypeScript declarations of tidings.js, the browser client of Tidings sessions
// (wire protocol v1, see docs/transports.md).

/** A transport a session can travel over, in the order tried by default. */
export type TransportName = "websocket" | "sse" | "longpoll";

/**
 * `connecting`: the first attempt; `open`: a transport is open; `reconnecting`: waiting
 * for or making another attempt after a failure; `closed`: over for good.
 */
export type ConnectionState = "connecting" | "open" | "reconnecting" | "closed";

/** What `send()` takes: text, or bytes. */
export type SendData = string | ArrayBuffer | ArrayBufferView;

export interface BackoffOptions {
  /** First retry delay in ms (default 250). */
  initial?: number;
  /** Largest retry delay in ms (default 10000). */
  max?: number;
  /** Growth per failed attempt (default 2). */
  factor?: number;
  /** Fraction of the delay taken off at random, 0..1 (default 0.5). */
  jitter?: number;
}

export interface ConnectOptions {
  /** Transports to try, in order (default all three); a list of one forces it. */
  transports?: TransportName[];
  backoff?: BackoffOptions;
  /** ms a transport may take to open before the next one is tried (default 5000). */
  openTimeout?: number;
  /** A streaming transport that dies within this many ms of opening died early (5000). */
  earlyDeath?: number;
  /** Early deaths in a row that demote a streaming transport (default 3). */
  maxEarlyDeaths?: number;
  /** ms a demoted transport is skipped before it is tried again (default 300000). */
  demoteFor?: number;
  /** ms without a WebSocket frame, or a byte on an SSE stream or a poll, before it counts as dead (45000). */
  idleTimeout?: number;
  /** ms to wait before acknowledging received messages (default 200). */
  ackDelay?: number;
  /** Acknowledge at once when this many messages are unacknowledged (default 50). */
  ackEvery?: number;
  /** Largest body of one POST of client messages, roughly, in bytes (256 KiB). */
  maxBatchBytes?: number;
  /** fetch() credentials mode of the HTTP transports (default "same-origin"). */
  credentials?: RequestCredentials;
  /** End the session when the page is unloaded (pagehide, not into the bfcache). */
  closeOnPageHide?: boolean;
}

/** The defaults of every option. */
export const DEFAULTS: Readonly<Required<Omit<ConnectOptions, "backoff">> & {
  backoff: Readonly<Required<BackoffOptions>>;
}>;

/** A message from the consumer. */
export class TidingsMessageEvent extends MessageEvent<string | ArrayBuffer> {
  /** The message's sequence number in the session. */
  readonly seq: number;
  /** The message parsed as JSON (bytes are decoded as UTF-8 first). */
  json<T = unknown>(): T;
}

export interface OpenDetail {
  transport: TransportName;
  sessionId: string;
  /** Whether an existing session was resumed (false for a new one). */
  resumed: boolean;
}

export interface ReconnectingDetail {
  /** ms until the next attempt. */
  delay: number;
  /** The transport the next attempt uses. */
  transport: TransportName;
  /** Why the last transport connection ended or failed. */
  reason: string;
}

export interface TransportDetail {
  transport: TransportName;
  previous: TransportName | null;
}

export interface ContinuityLostDetail {
  /** The session that could not be resumed. */
  previousSessionId: string;
  /** The new session. */
  sessionId: string;
  /** The last sequence number received in the old session. */
  lastSeq: number;
  /**
   * Messages sent to the old session that it had not acknowledged (not resent). The
   * last of them may have reached the old consumer all the same, if it took them just
   * before the connection dropped and the acknowledgement was lost with it.
   */
  unsent: Array<string | ArrayBuffer>;
}

export interface ConnectionEventMap {
  open: CustomEvent<OpenDetail>;
  message: TidingsMessageEvent;
  reconnecting: CustomEvent<ReconnectingDetail>;
  /**
   * The session is over. `code`: the consumer's close code (close message), your
   * close() code, or the HTTP status when the server refused the session (403) or
   * answered another final 4xx; 1009 when a message was too big for the server.
   */
  close: CloseEvent;
  transport: CustomEvent<TransportDetail>;
  continuitylost: CustomEvent<ContinuityLostDetail>;
}

export interface ConnectionStats {
  /** Transport connections that failed to open (the next transport was tried). */
  openFailures: number;
  /** Transport connections that ended or failed to open and were retried. */
  reconnects: number;
  /** Messages received again after a resume and dropped. */
  duplicates: number;
  /** Messages delivered to the application. */
  received: number;
  /** Messages the application sent. */
  sent: number;
}

/** One session with a consumer, over whichever transport works. */
export class Connection extends EventTarget {
  constructor(url: string | URL, options?: ConnectOptions);

  /** The absolute URL given to connect(). */
  readonly url: string;
  readonly state: ConnectionState;
  /** The open transport, or null while not open. */
  readonly transport: TransportName | null;
  /** The session id, once the server has opened a session (null when closed). */
  readonly sessionId: string | null;
  /** Sequence number of the last message delivered. */
  readonly lastSeq: number;
  /**
   * Client messages not yet acknowledged by the server (its outbox). The server
   * acknowledges within about 200 ms on an open WebSocket or SSE stream, in the
   * answer to each POST, and in the open message of every transport connection.
   */
  readonly pending: number;
  readonly stats: ConnectionStats;

  onopen: ((this: Connection, event: CustomEvent<OpenDetail>) => void) | null;
  onmessage: ((this: Connection, event: TidingsMessageEvent) => void) | null;
  /** Called with each message parsed as JSON. */
  onjson: ((this: Connection, value: any, event: TidingsMessageEvent) => void) | null;
  onreconnecting: ((this: Connection, event: CustomEvent<ReconnectingDetail>) => void) | null;
  onclose: ((this: Connection, event: CloseEvent) => void) | null;
  ontransport: ((this: Connection, event: CustomEvent<TransportDetail>) => void) | null;
  oncontinuitylost: ((this: Connection, event: CustomEvent<ContinuityLostDetail>) => void) | null;

  /** Send text or bytes; queued while not open, resent after a resume until acknowledged. */
  send(data: SendData): void;
  /** Send a value as JSON text. */
  sendJSON(value: unknown): void;
  /** End the session (the consumer gets disconnect 1000). Does nothing when closed. */
  close(code?: number, reason?: string): void;

  addEventListener<K extends keyof ConnectionEventMap>(
    type: K,
    listener: (this: Connection, event: ConnectionEventMap[K]) => void,
    options?: boolean | AddEventListenerOptions,
  ): void;
  addEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: boolean | AddEventListenerOptions,
  ): void;
  removeEventListener<K extends keyof ConnectionEventMap>(
    type: K,
    listener: (this: Connection, event: ConnectionEventMap[K]) => void,
    options?: boolean | EventListenerOptions,
  ): void;
  removeEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: boolean | EventListenerOptions,
  ): void;
}

/** Open a session with the consumer at `url` (relative, http(s): or ws(s):). */
export function connect(url: string | URL, options?: ConnectOptions): Connection;

/** One connection of a presence member, as the server's `presence.list()` gives it. */
export interface PresenceMeta {
  /** Unique per track: a new ref means new metadata. */
  ref: string;
  /** The connection's public id (a digest of its channel name). */
  conn: string;
  /** Unix time, in seconds, of the track. */
  joined_at: number;
  /** Whatever the application added. */
  [key: string]: unknown;
}

/** A topic's members: one entry per key (user), with one meta per connection. */
export type PresenceState = Record<string, { metas: PresenceMeta[] }>;

export interface PresenceJoinDetail {
  key: string;
  /** The key's metas after the join. */
  current: PresenceMeta[];
  joined: PresenceMeta[];
}

export interface PresenceLeaveDetail {
  key: string;
  /** The key's metas after the leave (empty: the key is gone). */
  current: PresenceMeta[];
  left: PresenceMeta[];
}

export interface PresenceEventMap {
  join: CustomEvent<PresenceJoinDetail>;
  leave: CustomEvent<PresenceLeaveDetail>;
  sync: CustomEvent<{ state: PresenceState }>;
}

/**
 * The members of one topic, kept from the consumer's `presence.state` and
 * `presence.diff` messages, over whichever transport the connection uses.
 */
export class Presence extends EventTarget {
  constructor(connection: Connection, topic: string);
  readonly connection: Connection;
  readonly topic: string;
  /** The members now. */
  list(): PresenceState;
  /** Stop following the connection's messages. */
  close(): void;

  addEventListener<K extends keyof PresenceEventMap>(
    type: K,
    listener: (this: Presence, event: PresenceEventMap[K]) => void,
    options?: boolean | AddEventListenerOptions,
  ): void;
  addEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: boolean | AddEventListenerOptions,
  ): void;
  removeEventListener<K extends keyof PresenceEventMap>(
    type: K,
    listener: (this: Presence, event: PresenceEventMap[K]) => void,
    options?: boolean | EventListenerOptions,
  ): void;
  removeEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: boolean | EventListenerOptions,
  ): void;
}

/** Follow the members of `topic` on `connection`. */
export function presence(connection: Connection, topic: string): Presence;
