// Type declarations for switchboard-client (hand-written; checked by
// `npm run test:types` against test/types-check.ts).

/**
 * How the client reaches the gateway: "websocket" (GET /ws, upgraded), or
 * "sse" (a server-sent events stream, GET /sse, with commands as HTTP
 * requests, POST /sse/command), for networks whose proxies block the upgrade.
 */
export type Transport = "websocket" | "sse";

/**
 * The frames' format on the WebSocket: "json" (text frames), or "msgpack"
 * (the `switchboard.msgpack` subprotocol: every frame one MessagePack map in
 * a binary frame). The data you publish and receive are plain JS values
 * either way. SSE is always JSON.
 */
export type Format = "json" | "msgpack";

/** Connection states. "stopped": will not reconnect until connect() is called. */
export type ConnectionState = "connecting" | "connected" | "disconnected" | "stopped";

/**
 * `SwitchboardError.code`: the server's error codes, the handshake refusals,
 * and the SDK's own. Other strings may come from newer servers.
 */
export type ErrorCode =
  // server replies
  | "bad_request"
  | "unauthorized"
  | "forbidden"
  | "rate_limited"
  | "too_large"
  | "token_expired"
  | "internal"
  | "unavailable" // a publish while Redis has no master for it; also a handshake refusal (503)
  // handshake refusals (learnt from the probe)
  | "forbidden_origin"
  // the SDK's own
  | "bad_url"
  | "bad_options"
  | "bad_token"
  | "offline"
  | "timeout"
  | "disconnected"
  | "overloaded"
  | "unsubscribed"
  | "already_subscribed"
  | "disconnected_by_server"
  | "policy_violation"
  | "handler_error"
  | "unsupported_format" // format "msgpack" and the gateway chose no switchboard.msgpack subprotocol
  | (string & {});

export class SwitchboardError extends Error {
  constructor(code: ErrorCode, message: string, details?: { status?: number; retryAfter?: number; closeCode?: number; cause?: unknown });
  readonly name: "SwitchboardError";
  readonly code: ErrorCode;
  /** The HTTP status of a handshake refusal (from the probe). */
  readonly status?: number;
  /** Seconds the server asked to wait (429, 503). */
  readonly retryAfter?: number;
  /** The close code that caused the error (a WebSocket close, or an SSE `close` event). */
  readonly closeCode?: number;
}

/** Time and randomness, injectable so tests need no sleeps. Partial overrides are merged with the defaults. */
export interface Clock {
  now(): number;
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
  /** A number in [0, 1), as Math.random(). */
  random(): number;
}

/** The part of the WebSocket API the SDK uses. */
export interface WebSocketLike {
  readonly bufferedAmount?: number;
  /** The subprotocol the server chose; checked with format "msgpack". */
  readonly protocol?: string;
  /** Set to "arraybuffer" with format "msgpack". */
  binaryType?: string;
  /** A string (JSON), or a Uint8Array (format "msgpack": a binary frame). */
  send(data: string | Uint8Array): void;
  close(code?: number, reason?: string): void;
  // Event parameters are `any` so the DOM's and Node's WebSocket both fit;
  // the SDK reads `data` of message events and `code`/`reason` of close events.
  onopen: ((ev: any) => any) | null;
  onmessage: ((ev: any) => any) | null;
  onclose: ((ev: any) => any) | null;
  onerror: ((ev: any) => any) | null;
}

/** `protocols` is `["switchboard.msgpack"]` with format "msgpack", else not passed. */
export type WebSocketConstructorLike = new (url: string | URL, protocols?: string | string[]) => WebSocketLike;

export interface BackoffOptions {
  /** ms; the first retry waits random() * min. Default 250. */
  min?: number;
  /** ms; no retry waits longer (except Retry-After). Default 10000. */
  max?: number;
}

export interface SwitchboardOptions {
  /**
   * Returns the JWT (or a promise of it). Called before a connect without a
   * usable token, before expiry (the SDK then sends `refresh`), after a 401
   * and after a 4001 close. Reject (or throw) when no token can be had.
   */
  getToken: () => string | Promise<string>;
  /**
   * Transports to use, in order of preference. Default ["websocket", "sse"].
   * The client uses one at a time, starting with the first. It moves to the
   * next (after the last: back to the first, after a backoff delay) only
   * when the one in use looks blocked on the way: a WebSocket handshake
   * that fails while the probe (GET /ws?probe=1) answers 204 (the node
   * would take it: a proxy refused the upgrade), a route that answers 404,
   * 405 or a non-stream 200, or a connection that opens but brings no
   * welcome within `fallbackTimeout`. Refusals (401, 403, 429, 503), a node
   * that is down, and closes after a welcome keep the transport. So the
   * transport that last worked is kept for every reconnect of this client.
   */
  transports?: Transport[];
  /**
   * ms after a connection opens (the upgrade, or the stream's response
   * headers) within which the welcome must arrive, else the next transport
   * is tried. Only with two or more transports. Default 5000.
   */
  fallbackTimeout?: number;
  /** Exponential backoff with full jitter: delay = random() * min(max, min * 2^attempt). */
  backoff?: BackoffOptions;
  /** ms between application-level pings while connected; 0 turns them off. Default 20000. */
  pingInterval?: number;
  /** ms a command waits for its reply (also bounds getToken, the handshake and the probe). Default 10000. */
  requestTimeout?: number;
  /** Consecutive token failures (getToken errors, 401s) before the client stops. Default 3. */
  maxAuthFailures?: number;
  /** Commands waiting for replies at most; beyond, commands reject "overloaded". Default 1000. */
  maxPending?: number;
  /** Frames larger than this are refused locally with "too_large". Default 65536 (the gateway's default). */
  maxFrameBytes?: number;
  /** Commands reject "overloaded" while the socket holds more unsent bytes than this. Default 1 MiB. */
  maxBufferedBytes?: number;
  /**
   * Ask the gateway for batched frames (`&batch=1`): under load it may then
   * send several messages in one frame, one per line, which the SDK splits.
   * Saves frames and parsing on busy channels. Default true.
   */
  batch?: boolean;
  /**
   * The WebSocket's frame format. "msgpack" asks for the
   * `switchboard.msgpack` subprotocol (and fails with "unsupported_format"
   * if the gateway does not choose it), sends every command as MessagePack
   * in a binary frame and decodes binary frames. Values with no JSON form
   * (Uint8Array, ArrayBuffer, Date, NaN) are refused by the gateway with
   * "bad_request": send base64 and ISO strings. `batch` does not apply.
   * Over SSE the client speaks JSON. Default "json".
   */
  format?: Format;
  /** Default: globalThis.WebSocket. Needed only with the "websocket" transport. */
  WebSocket?: WebSocketConstructorLike;
  /**
   * Used for the handshake probe and by the "sse" transport (the stream is
   * read from `body.getReader()`). Default: globalThis.fetch.
   */
  fetch?: (url: string, init?: any) => Promise<{
    status: number;
    headers: { get(name: string): string | null };
    json(): Promise<any>;
    body?: any;
  }>;
  clock?: Partial<Clock>;
}

export interface StateEvent {
  state: ConnectionState;
  /** The close code, on "disconnected" and "stopped" after a close. */
  code?: number;
  reason?: string;
  /** Why the client stopped, or the token failure before a retry. */
  error?: SwitchboardError;
}

export interface Welcome {
  connection_id: string;
  node_id: string;
  user: string;
  /** Seconds until the gateway closes with 4001 unless the token is refreshed. */
  expires_in?: number;
  /** The transport this connection uses. */
  transport: Transport;
  /** This connection's frame format: the `format` option on WebSocket, "json" on SSE. */
  format: Format;
}

export interface SwitchboardEvents {
  state: StateEvent;
  error: SwitchboardError;
  welcome: Welcome;
}

export interface SwitchboardStats {
  /** Welcome frames received. */
  connects: number;
  /** Welcome frames after the first (on SSE, also a stream reopened for a new channel). */
  reconnects: number;
  /** Server frames ignored: invalid JSON or MessagePack, binary on a JSON connection, unknown type, missing fields. */
  unknownFrames: number;
  /** Messages delivered to onMessage. */
  messages: number;
  /** Messages dropped because their offset was at or below the known position. */
  duplicates: number;
  /** Messages delivered from `history` pages after a cut replay (also counted in `messages`). */
  paged: number;
  /** Replies that came after their command timed out. */
  staleReplies: number;
}

/** A position in a channel's stream: the last message seen. */
export interface Position {
  offset: number;
  epoch: string;
}

export interface MessageContext {
  channel: string;
  /** Present on channels with history. */
  offset?: number;
}

export interface Member {
  user: string;
  connection_id: string;
  /** The token's `info` claim, or null. */
  info: Record<string, unknown> | null;
}

export interface RecoverEvent {
  /**
   * false: messages may have been lost while away; reload the channel's
   * state. Always true for the first subscribe. After a replay the server
   * cut at its send queue's size (`replayed_to`), the SDK pages the rest
   * through `history` first and reports once done: true when every missed
   * message was delivered.
   */
  recovered: boolean;
  /** Absent on channels without history. */
  offset?: number;
  epoch?: string;
}

export interface SubscriptionHandlers<T = unknown> {
  onMessage?(data: T, context: MessageContext): void;
  /** `join` events, where the namespace enables join_leave. */
  onJoin?(member: Member): void;
  onLeave?(member: Member): void;
  /** After every successful (re)subscribe on a channel with history, and after a resubscribe on one without. */
  onRecover?(event: RecoverEvent): void;
  /** A `reset` frame: messages may be lost; reload the channel's state. */
  onReset?(position: Position): void;
  /** A (re)subscribe failed. Transient failures (internal, rate_limited) are retried. */
  onError?(error: SwitchboardError): void;
}

/** The subscribe reply: {offset, epoch} on channels with history, else {}. */
export interface SubscribeResult {
  offset?: number;
  epoch?: string;
  recovered?: boolean;
  /** With recovered: false, the replay was cut here; the rest is in history (the SDK pages it). */
  replayed_to?: number;
}

/** {offset, epoch} on channels with history, else {}. */
export interface PublishResult {
  offset?: number;
  epoch?: string;
}

/** One message of publishBatch(). */
export interface BatchMessage<T = unknown> {
  channel: string;
  data: T;
}

/** One entry per message of publishBatch(): its PublishResult, or its own error. */
export type BatchResult = PublishResult | SwitchboardError;

export interface HistoryMessage<T = unknown> {
  type: "message";
  channel: string;
  offset: number;
  data: T;
}

export interface HistoryResult<T = unknown> {
  offset: number;
  epoch: string;
  messages: HistoryMessage<T>[];
  /** Present when `since` was given. */
  recovered?: boolean;
}

export interface HistoryOptions {
  /** 1 to 1000; the server's default is 100. */
  limit?: number;
  since?: Position;
}

export type SubscriptionState = "subscribing" | "subscribed" | "unsubscribed" | "failed";

export class Subscription<T = unknown> {
  private constructor();
  readonly channel: string;
  /** Settles with the first subscribe reply; rejects if it fails, or if the client stops or unsubscribes first. */
  readonly ready: Promise<SubscribeResult>;
  readonly state: SubscriptionState;
  /** The last position seen (a copy), or null on channels without history. */
  readonly position: Position | null;
  publish(data: T): Promise<PublishResult>;
  presence(): Promise<Member[]>;
  history(options?: HistoryOptions): Promise<HistoryResult<T>>;
  unsubscribe(): Promise<void>;
}

export class Switchboard {
  /** Throws SwitchboardError "bad_url" or "bad_options" synchronously. */
  constructor(url: string | URL, options: SwitchboardOptions);
  readonly state: ConnectionState;
  /** The transport in use, or the next attempt's; it changes only by a fallback (see `transports`). */
  readonly transport: Transport;
  readonly stats: Readonly<SwitchboardStats>;
  /** Returns a function that removes the listener. */
  on<E extends keyof SwitchboardEvents>(event: E, listener: (payload: SwitchboardEvents[E]) => void): () => void;
  off<E extends keyof SwitchboardEvents>(event: E, listener: (payload: SwitchboardEvents[E]) => void): void;
  connect(): void;
  disconnect(): void;
  /** Throws "already_subscribed" if the channel already has a subscription. */
  subscribe<T = unknown>(channel: string, handlers?: SubscriptionHandlers<T>): Subscription<T>;
  publish<T = unknown>(channel: string, data: T): Promise<PublishResult>;
  /**
   * 1 to 1000 messages in one command, in list order. Resolves with one entry
   * per message, in order: its PublishResult or a SwitchboardError of its own.
   */
  publishBatch<T = unknown>(messages: BatchMessage<T>[]): Promise<BatchResult[]>;
  presence(channel: string): Promise<Member[]>;
  history<T = unknown>(channel: string, options?: HistoryOptions): Promise<HistoryResult<T>>;
  /** Resolves with the round trip in milliseconds. */
  ping(): Promise<number>;
}
