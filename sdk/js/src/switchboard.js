// switchboard-client: the browser and Node (20+) client for Switchboard.
//
// One connection per Switchboard instance: a WebSocket, or, where a proxy
// blocks the upgrade, a server-sent events stream (GET /sse) with commands
// as HTTP requests (POST /sse/command); see `transports`. The SDK owns what every
// application would otherwise get wrong by hand: reconnect with exponential
// backoff and full jitter, resubscribe with recovery (`since` positions),
// token refresh before expiry, request/reply bookkeeping with timeouts, and
// an application-level ping for browsers. No runtime dependencies (the
// MessagePack codec of `format: "msgpack"` is vendored in src/vendor/);
// every buffer is bounded. The wire protocol is docs/protocol.md of the
// gateway.

import { Decoder, Encoder } from "./vendor/msgpack.js";

/** Error codes the SDK itself produces (the server's codes pass through). */
const CODES = Object.freeze({
  badUrl: "bad_url",
  badOptions: "bad_options",
  badToken: "bad_token",
  offline: "offline",
  timeout: "timeout",
  disconnected: "disconnected",
  overloaded: "overloaded",
  tooLarge: "too_large",
  unauthorized: "unauthorized",
  forbiddenOrigin: "forbidden_origin",
  rateLimited: "rate_limited",
  unavailable: "unavailable",
  unsubscribed: "unsubscribed",
  alreadySubscribed: "already_subscribed",
  disconnectedByServer: "disconnected_by_server",
  policyViolation: "policy_violation",
  handlerError: "handler_error",
  unsupportedFormat: "unsupported_format",
});

/** Close codes with a meaning of their own (docs/protocol.md, "Close codes"). */
const CLOSE = Object.freeze({
  normal: 1000,
  abnormal: 1006, // no close frame: network failure, killed node
  policy: 1008,
  draining: 1012,
  slowConsumer: 1013,
  tokenExpired: 4001,
  kicked: 4003,
  clientGaveUp: 4000, // ours: a connection we abandoned (ping or connect timeout)
});

/**
 * Subscribe failures worth retrying on the same connection. `unavailable`:
 * the gateway's subscribe proxy got no answer from the application's backend.
 */
const TRANSIENT_SUBSCRIBE_ERRORS = new Set(["internal", "rate_limited", "overloaded", "unavailable"]);

/** The transports the SDK speaks, by their `transports` option names. */
const TRANSPORTS = Object.freeze(["websocket", "sse"]);

/**
 * The WebSocket formats (docs/protocol.md, "Formats and compression"), by
 * their `format` option names. "json": text frames, no subprotocol asked
 * (as with any gateway). "msgpack": the `switchboard.msgpack` subprotocol,
 * every frame one MessagePack map in a binary frame. SSE is JSON either way.
 */
const FORMATS = Object.freeze(["json", "msgpack"]);
const MSGPACK_SUBPROTOCOL = "switchboard.msgpack";

// One codec each for the whole module: encoding and decoding are
// synchronous, the encoder reuses its buffer, and the decoder keeps a cache
// of map keys (the frames' keys repeat) worth sharing between connections.
// `ignoreUndefined`: a key whose value is undefined is left out, as
// JSON.stringify does.
const newMsgpackEncoder = () => new Encoder({ ignoreUndefined: true });
let msgpackEncoder = newMsgpackEncoder();
const msgpackDecoder = new Decoder();
/**
 * The encoder's buffer grows to the largest command it encoded; past this
 * size (the gateway's default frame limit) it is dropped for a fresh one
 * rather than kept for the page's lifetime.
 */
const MSGPACK_BUFFER_KEPT = 65_536;

const DEFAULTS = Object.freeze({
  transports: TRANSPORTS,
  format: "json",
  fallbackTimeout: 5_000,
  backoff: { min: 250, max: 10_000 },
  pingInterval: 20_000,
  requestTimeout: 10_000,
  maxAuthFailures: 3,
  maxPending: 1000,
  maxFrameBytes: 65_536, // the gateway's default session.max_frame_bytes
  maxBufferedBytes: 1_048_576,
});

// setTimeout silently fires at once for delays above 2^31-1 ms (~24.8 days);
// a token valid for a month must not trigger a refresh storm.
const MAX_TIMER_MS = 2_147_483_647;
/** The most messages one publishBatch() may carry (the server's limit). */
const MAX_BATCH_MESSAGES = 1000;
/**
 * Messages per `history` page when catching up after a cut replay: the
 * server's default `history` limit, so a long catch-up stays well within
 * the default message rate's burst.
 */
const CATCH_UP_PAGE = 100;
// 2^30 already exceeds any sane backoff.max / backoff.min ratio.
const MAX_BACKOFF_EXPONENT = 30;
/**
 * The longest server-sent event (or line) the stream reader buffers: far
 * above any frame the gateway sends (its frames are bounded by
 * max_frame_bytes plus an envelope), so only a broken or hostile stream
 * reaches it, and is dropped.
 */
const MAX_SSE_EVENT_CHARS = 16 * 1024 * 1024;

export class SwitchboardError extends Error {
  /**
   * @param {string} code a server error code or one of the SDK's own
   * @param {string} message
   * @param {object} [details] status, retryAfter, closeCode, cause
   */
  constructor(code, message, details = {}) {
    super(message, details.cause === undefined ? undefined : { cause: details.cause });
    this.name = "SwitchboardError";
    this.code = code;
    if (details.status !== undefined) this.status = details.status;
    if (details.retryAfter !== undefined) this.retryAfter = details.retryAfter;
    if (details.closeCode !== undefined) this.closeCode = details.closeCode;
  }
}

const defaultClock = Object.freeze({
  now: () => Date.now(),
  setTimeout: (fn, ms) => globalThis.setTimeout(fn, ms),
  clearTimeout: (handle) => globalThis.clearTimeout(handle),
  random: () => Math.random(),
});

/**
 * A pub/sub connection to a Switchboard gateway. See README.md.
 *
 * States: "disconnected" (idle, or waiting to reconnect), "connecting",
 * "connected" (the welcome frame arrived), "stopped" (will not reconnect by
 * itself: disconnect() was called, or a refusal that retrying cannot fix).
 */
export class Switchboard {
  constructor(url, options = {}) {
    this._url = parseUrl(url);
    this._opts = normalizeOptions(options);
    this._clock = this._opts.clock;

    this._listeners = new Map(); // event name -> Set of listeners
    this._state = "disconnected";
    this._started = false; // connect() or disconnect() was called at least once
    this._active = false; // connecting, connected or waiting to reconnect

    // Everything that belongs to one connection attempt checks `_gen` after
    // each await: disconnect(), stop and a new attempt bump it, so late
    // continuations of an old attempt do nothing.
    this._gen = 0;
    // The current connection: a WebSocket, or an SseConnection (same
    // onopen/onmessage/onclose/onerror, send, close and bufferedAmount).
    this._ws = null;
    // Index in `transports` of the transport in use: kept across reconnects,
    // moved on only when that transport looks blocked (see _fallBack).
    this._transportIndex = 0;
    // On SSE: the subscriptions the open stream named, in its request's
    // order, each with the position it resumes from: [{sub, since}].
    this._streamSubs = [];
    this._reopenQueued = false; // a stream reopen is due (a new channel)
    this._opened = false; // the current socket fired `open`
    // The format of the current connection's frames: the `format` option on
    // WebSocket, "json" on SSE (streams are JSON only).
    this._wireFormat = "json";
    this._welcomed = false; // ...and the welcome frame arrived
    this._connectedAt = 0;

    this._token = null; // the token the next connect uses; null: ask getToken
    this._tokenExpiresAt = 0; // clock time the server closes with 4001
    this._tokenPromise = null; // the getToken call in flight, shared
    this._authFailures = 0; // consecutive; reset by a welcome
    this._attempt = 0; // backoff exponent
    this._attemptAtConnect = 0; // its value when the last welcome reset it
    this._refreshAttempt = 0;

    this._timers = { reconnect: null, connect: null, fallback: null, ping: null, refresh: null };
    this._pending = new Map(); // reply id -> {resolve, reject, timer}
    this._nextId = 1;
    this._subs = new Map(); // channel -> Subscription, in subscribe order

    this.stats = {
      connects: 0, // welcomes received
      reconnects: 0, // welcomes after the first
      unknownFrames: 0, // server frames ignored: invalid JSON, unknown type, missing fields
      messages: 0, // message frames delivered to onMessage
      duplicates: 0, // message frames dropped: offset at or below the known position
      paged: 0, // messages delivered from history pages after a cut replay
      staleReplies: 0, // replies whose command already timed out
    };
  }

  /** The current connection state. */
  get state() {
    return this._state;
  }

  /**
   * The transport in use, or the next attempt's: "websocket" or "sse". It
   * changes only by a fallback (see the `transports` option).
   */
  get transport() {
    return this._opts.transports[this._transportIndex];
  }

  /** Adds a listener; returns a function that removes it. */
  on(event, listener) {
    if (typeof listener !== "function") throw new TypeError("listener must be a function");
    let set = this._listeners.get(event);
    if (!set) this._listeners.set(event, (set = new Set()));
    set.add(listener);
    return () => this.off(event, listener);
  }

  off(event, listener) {
    this._listeners.get(event)?.delete(listener);
  }

  /**
   * Starts connecting (no-op while connecting, connected or waiting to
   * reconnect). After a stop it starts afresh: auth failures and backoff are
   * forgotten, subscriptions are kept and resume from their positions.
   */
  connect() {
    this._started = true;
    if (this._active) return;
    this._active = true;
    this._authFailures = 0;
    this._attempt = 0;
    this._startAttempt();
  }

  /**
   * Closes with 1000 and stays stopped. Pending commands reject with code
   * "disconnected". Subscriptions are kept with their positions: a later
   * connect() resumes them with `since`.
   */
  disconnect() {
    this._started = true;
    this._stop({
      code: CLOSE.normal,
      reason: "disconnect() called",
      rejectWith: new SwitchboardError(CODES.disconnected, "disconnect() was called"),
    });
  }

  /**
   * Subscribes to a channel; the subscription lives until unsubscribe(),
   * across reconnects. The first subscribe also starts the connection.
   */
  subscribe(channel, handlers = {}) {
    if (typeof channel !== "string" || channel === "") {
      throw new SwitchboardError("bad_request", "channel must be a non-empty string");
    }
    if (this._subs.has(channel)) {
      throw new SwitchboardError(
        CODES.alreadySubscribed,
        `already subscribed to ${channel}; use the existing subscription or unsubscribe first`,
      );
    }
    const sub = new Subscription(this, channel, handlers);
    this._subs.set(channel, sub);
    if (this._welcomed) this._sendSubscribe(sub);
    else if (!this._started) this.connect();
    // On SSE, a stream being opened names the channels it had at its
    // start: _onWelcome reopens it for the others.
    return sub;
  }

  /** Publishes without subscribing (the `publish` grant is enough). */
  publish(channel, data) {
    return this._command({ type: "publish", channel, data });
  }

  /**
   * Publishes many messages in one command (`publish_batch`), handed to the
   * broker in list order. Resolves with one entry per message, in order:
   * what publish() would resolve with ({offset, epoch}, or {} on channels
   * without history), or a SwitchboardError carrying that message's own
   * code and message (bad channel, no grant, rate_limited, internal). Each
   * message counts against the message rate like a publish. Rejects only
   * when the command as a whole fails: 0 or more than 1000 messages, not
   * connected, a frame over maxFrameBytes, no reply in time.
   */
  publishBatch(messages) {
    if (!Array.isArray(messages) || messages.length < 1 || messages.length > MAX_BATCH_MESSAGES) {
      return Promise.reject(new SwitchboardError("bad_request", `messages must hold 1 to ${MAX_BATCH_MESSAGES} messages`));
    }
    const list = messages.map((m) => ({ channel: m?.channel, data: m?.data }));
    return this._command({ type: "publish_batch", messages: list }).then((result) => {
      const replies = result?.replies;
      if (!Array.isArray(replies) || replies.length !== list.length) {
        throw new SwitchboardError("internal", `the batch reply does not hold one result per message`);
      }
      return replies.map((reply) =>
        reply?.error && typeof reply.error === "object"
          ? new SwitchboardError(String(reply.error.code ?? "internal"), String(reply.error.message ?? ""))
          : reply ?? {},
      );
    });
  }

  /** Resolves with the channel's members: [{user, connection_id, info}]. */
  presence(channel) {
    return this._command({ type: "presence", channel }).then((r) => r.members);
  }

  /** Reads stored messages: {offset, epoch, messages, recovered?}. */
  history(channel, options) {
    const { limit, since } = options ?? {};
    const frame = { type: "history", channel };
    if (limit !== undefined) frame.limit = limit;
    if (since !== undefined && since !== null) frame.since = since;
    return this._command(frame);
  }

  /** Application-level ping; resolves with the round trip in milliseconds. */
  ping() {
    const started = this._clock.now();
    return this._command({ type: "ping" }).then(() => this._clock.now() - started);
  }

  /**
   * Test hook, not part of the API: drops the socket as a network failure
   * would (the server may not even notice), so reconnect and recovery can be
   * exercised without killing the gateway.
   */
  _dropConnection() {
    if (this._ws) this._abandon(this._ws, "connection dropped (test hook)", { handshakeFailed: false });
  }

  // ---- connection lifecycle ------------------------------------------------

  async _startAttempt() {
    const gen = ++this._gen;
    this._timers.reconnect = null;
    this._setState("connecting");
    if (gen !== this._gen) return; // a state listener called disconnect()
    let token;
    try {
      token = await this._usableToken();
    } catch (err) {
      if (gen === this._gen) this._onAuthFailure(err);
      return;
    }
    if (gen !== this._gen) return;
    if (this.transport === "sse") this._openStream(token);
    else this._openSocket(token);
  }

  _openSocket(token) {
    const msgpack = this._opts.format === "msgpack";
    let ws;
    try {
      // The gateway ignores batch=1 on msgpack connections: do not ask.
      const params = this._opts.batch && !msgpack ? { token, batch: "1" } : { token };
      const url = withParams(this._url, params).href;
      ws = msgpack ? new this._opts.WebSocket(url, [MSGPACK_SUBPROTOCOL]) : new this._opts.WebSocket(url);
      // Binary frames as ArrayBuffers (a browser's default is Blob, which
      // can only be read asynchronously, and would reorder frames).
      if (msgpack) ws.binaryType = "arraybuffer";
    } catch (err) {
      // Browsers throw synchronously for blocked ports, mixed content, CSP:
      // retrying cannot help.
      this._stop({ error: new SwitchboardError(CODES.badUrl, `cannot open a WebSocket: ${err.message}`, { cause: err }) });
      return;
    }
    this._ws = ws;
    this._wireFormat = this._opts.format;
    this._opened = false;
    this._welcomed = false;
    // A connection that neither opens nor fails (a black-holed address, a
    // silent proxy) would otherwise wait for the OS's TCP timeout.
    // No probe then: it would hang the same way.
    this._timers.connect = this._clock.setTimeout(
      () => this._abandon(ws, "no welcome within requestTimeout", { handshakeFailed: false }),
      this._opts.requestTimeout,
    );
    ws.onopen = () => {
      if (this._ws !== ws) return;
      // Browsers fail a handshake whose answer does not name a subprotocol
      // asked for; an implementation that lets it through would leave us
      // sending MessagePack to a node that reads JSON. Retrying cannot help.
      if (msgpack && ws.protocol !== MSGPACK_SUBPROTOCOL) {
        const chose = ws.protocol ? `"${ws.protocol}"` : "no subprotocol";
        this._stop({
          error: new SwitchboardError(
            CODES.unsupportedFormat,
            `format "msgpack" asks the gateway for the ${MSGPACK_SUBPROTOCOL} subprotocol, and it chose ${chose}: this gateway does not speak MessagePack; use format "json"`,
          ),
        });
        return;
      }
      this._opened = true;
      this._armFallback(ws);
    };
    ws.onmessage = (ev) => this._onData(ws, ev.data);
    ws.onclose = (ev) => {
      if (this._ws === ws) this._onClosed(ev.code, ev.reason);
    };
    ws.onerror = () => {
      // Browsers follow an error with a close event, but Node 20's WebSocket
      // fires only `error` when the handshake fails, and never closes. So a
      // failure before `open` ends the attempt here; after `open` the close
      // event (or the ping timeout) does.
      if (this._ws === ws && !this._opened) this._abandon(ws, "the WebSocket handshake failed");
    };
  }

  /**
   * Opens the SSE stream (GET /sse) naming every subscription, in subscribe
   * order, with the positions they resume from as its Last-Event-ID. Its
   * events are handled like WebSocket frames; `subscription` events stand
   * for the subscribe replies (see _onSubscriptionFrame).
   */
  _openStream(token) {
    const entries = [...this._subs.values()].map((sub) => ({ sub, since: sub._position ? { ...sub._position } : null }));
    this._streamSubs = entries;
    this._reopenQueued = false;
    // The contract's event id: `<offset>:<epoch>` per channel in request
    // order, `,`-separated, empty for a channel without a position. None at
    // all when no channel has one: a fresh start.
    const lastEventId = entries.some((e) => e.since)
      ? entries.map((e) => (e.since ? `${e.since.offset}:${e.since.epoch}` : "")).join(",")
      : null;
    const urls = sseUrls(this._url);
    for (const { sub } of entries) urls.stream.searchParams.append("channel", sub.channel);
    const conn = new SseConnection({
      url: urls.stream.href,
      commandUrl: urls.command,
      token,
      lastEventId,
      fetch: this._opts.fetch,
      clock: this._clock,
      requestTimeout: this._opts.requestTimeout,
      // Command answers come back on their own HTTP requests, matched to
      // the pending commands by id: not tied to the stream's events.
      onReply: (frame) => this._onReply(frame),
    });
    this._ws = conn;
    this._wireFormat = "json"; // streams and their commands are JSON only
    this._opened = false;
    this._welcomed = false;
    this._timers.connect = this._clock.setTimeout(
      () => this._abandon(conn, "no welcome within requestTimeout", { handshakeFailed: false }),
      this._opts.requestTimeout,
    );
    conn.onopen = () => {
      if (this._ws !== conn) return;
      this._opened = true;
      this._armFallback(conn);
    };
    conn.onmessage = (ev) => this._onData(conn, ev.data);
    conn.onclose = (ev) => {
      if (this._ws === conn) {
        this._onClosed(ev.code, ev.reason, { handshakeFailed: !this._opened, refusal: ev.refusal ?? null });
      }
    };
    conn.onerror = () => {};
    conn.start();
  }

  /**
   * A WebSocket message or an SSE event's data: one frame, or several, one
   * per line (JSON text); or one MessagePack map (a binary frame of a
   * msgpack connection).
   */
  _onData(conn, data) {
    if (this._ws !== conn) return;
    if (typeof data !== "string") {
      this._onFrame(this._wireFormat === "msgpack" ? decodeMsgpack(data) : null);
      return;
    }
    // With batching (the default on WebSocket), one frame may carry several
    // messages, one per line; compact JSON never holds a raw newline.
    if (typeof data === "string" && data.includes("\n")) {
      for (const line of data.split("\n")) {
        if (this._ws !== conn) return; // a frame closed the connection
        this._onFrame(line);
      }
    } else {
      this._onFrame(data);
    }
  }

  /**
   * After `open`, a welcome must follow within fallbackTimeout, or the
   * transport counts as blocked (a proxy that accepts the upgrade or the
   * stream but passes nothing through) and the next one is tried.
   */
  _armFallback(conn) {
    if (this._opts.transports.length < 2) return;
    const ms = this._opts.fallbackTimeout;
    this._timers.fallback = this._clock.setTimeout(() => {
      this._timers.fallback = null;
      this._abandon(conn, `no welcome within fallbackTimeout (${ms} ms) after the ${this.transport} opened`, {
        handshakeFailed: false,
        blocked: true,
      });
    }, ms);
  }

  /**
   * Forgets a socket we no longer trust and handles it as a close without a
   * close frame. Its later events are ignored (`_ws` no longer points to it).
   */
  _abandon(ws, reason, { handshakeFailed = !this._opened, blocked = false } = {}) {
    if (this._ws !== ws) return;
    detach(ws);
    try {
      ws.close(CLOSE.clientGaveUp, reason.slice(0, 120));
    } catch {
      // Already closed or closing: nothing to release.
    }
    this._onClosed(CLOSE.abnormal, reason, { handshakeFailed, blocked });
  }

  /**
   * The one place a connection ends: decide between reconnect, fallback
   * and stop. `handshakeFailed`: it never opened, so the HTTP refusal is
   * unknown (WebSocket: worth a probe) or in `refusal` (SSE: the stream's
   * own answer). `blocked`: the transport looked blocked (no welcome after
   * open): the next transport is tried.
   */
  _onClosed(code, reason = "", { handshakeFailed = !this._opened, refusal = null, blocked = false } = {}) {
    const ws = this._ws;
    const welcomed = this._welcomed;
    const gen = ++this._gen; // late replies and token calls of this socket are void
    if (ws) detach(ws);
    this._ws = null;
    this._opened = false;
    this._welcomed = false;
    this._clearConnectionTimers();
    this._rejectPending(
      new SwitchboardError(CODES.disconnected, `the connection closed (code ${code}) before the reply`, { closeCode: code }),
    );
    for (const sub of this._subs.values()) sub._connectionLost();

    if (code === CLOSE.kicked) {
      this._stop({ code, reason, error: new SwitchboardError(CODES.disconnectedByServer, reason || "disconnected by the server", { closeCode: code }) });
      return;
    }
    if (code === CLOSE.policy) {
      this._stop({ code, reason, error: new SwitchboardError(CODES.policyViolation, reason || "closed for a policy violation", { closeCode: code }) });
      return;
    }
    if (welcomed) this._settleBackoffAfterSession(code);
    if (code === CLOSE.tokenExpired) this._token = null; // get a new one first
    this._setState("disconnected", { code, reason });
    if (gen !== this._gen) return; // a state listener called disconnect()

    if (code === CLOSE.draining) {
      // The node asked us to go elsewhere and spreads its own closes over
      // its drain window: come back soon, still jittered.
      this._scheduleReconnect(this._clock.random() * this._opts.backoff.min);
    } else if (blocked && this._opts.transports.length > 1) {
      this._fallBack();
    } else if (handshakeFailed && refusal) {
      this._onRefusal(gen, refusal);
    } else if (handshakeFailed && this.transport === "websocket") {
      // The handshake failed and browsers hide the HTTP status: ask why.
      this._probeThenRetry(gen);
    } else {
      this._scheduleReconnect(this._nextDelay());
    }
  }

  /**
   * A welcome resets the backoff, but a session that ends soon after (a
   * crash loop, an immediate slow-consumer close) must not let every client
   * reconnect at once again: then the backoff continues where it was.
   */
  _settleBackoffAfterSession(code) {
    const lived = this._clock.now() - this._connectedAt;
    if (code === CLOSE.slowConsumer) {
      this._attempt = Math.max(this._attemptAtConnect, 1);
    } else if (lived < this._opts.backoff.max) {
      this._attempt = this._attemptAtConnect;
    }
  }

  /** Full jitter: random() * min(max, min * 2^attempt), then attempt++. */
  _nextDelay() {
    const { min, max } = this._opts.backoff;
    const exponent = Math.min(this._attempt, MAX_BACKOFF_EXPONENT);
    this._attempt = exponent + 1;
    return this._clock.random() * Math.min(max, min * 2 ** exponent);
  }

  _scheduleReconnect(delay) {
    this._clearTimer("reconnect");
    this._timers.reconnect = this._clock.setTimeout(() => this._startAttempt(), clampDelay(delay));
  }

  /**
   * Moves to the next transport of `transports` and tries it at once; after
   * the last, back to the first, after a backoff delay (every transport
   * looked blocked: this is a retry like any other).
   */
  _fallBack() {
    const count = this._opts.transports.length;
    this._transportIndex = (this._transportIndex + 1) % count;
    this._scheduleReconnect(this._transportIndex === 0 ? this._nextDelay() : 0);
  }

  /**
   * Asks the gateway (GET /ws?probe=1) why the handshake failed and reacts
   * as to any refusal (see _onRefusal).
   */
  async _probeThenRetry(gen) {
    const token = this._token;
    const answer = token === null ? null : await this._probe(token);
    if (gen !== this._gen) return;
    this._onRefusal(gen, answer);
  }

  /**
   * Reacts to why a connection could not be made (the probe's answer, or
   * the SSE stream's own refusal; null when unknown): 401 → new token, 403
   * → stop, 429/503 → wait Retry-After. A handshake the node would have
   * taken (probe 204), or a route that is not there (404, 405, or a 200 that
   * is not an event stream: a proxy's page) means this transport is
   * blocked on the way: the next one is tried. A 400 naming one of our
   * channels (the stream names them all) fails that subscription, as a
   * subscribe reply would, and the stream is opened again without it;
   * another 400 cannot be fixed by retrying: stop. Else backoff.
   */
  _onRefusal(gen, answer) {
    const status = answer?.status;
    if (answer && (status === 204 || status === 200 || status === 404 || status === 405) && this._opts.transports.length > 1) {
      this._fallBack();
      return;
    }
    if (status === 400 && this.transport === "sse") {
      const refused = this._refusedSubscriptions(answer.error);
      if (refused.length === 0) {
        this._stop({ error: answer.error });
        return;
      }
      for (const sub of refused) {
        this._subs.delete(sub.channel);
        sub._fail(answer.error);
      }
      if (gen === this._gen) this._scheduleReconnect(0);
      return;
    }
    if (status === 401) {
      this._token = null;
      this._onAuthFailure(answer.error);
    } else if (status === 403) {
      this._stop({ error: answer.error });
    } else if (status === 429 || status === 503) {
      this._emit("error", answer.error);
      if (gen !== this._gen) return; // an error listener called disconnect()
      // Retry-After plus jitter: every client refused at once must not
      // come back at the same second.
      this._scheduleReconnect(answer.retryAfter * 1000 + this._nextDelay());
    } else {
      this._scheduleReconnect(this._nextDelay());
    }
  }

  /** Resolves with {status, error, retryAfter} or null when unknown. */
  async _probe(token) {
    const fetchFn = this._opts.fetch;
    if (typeof fetchFn !== "function") return null;
    const params = { probe: "1", token };
    // A same-origin GET carries no Origin header, but the failed handshake
    // did: name the page's origin so the probe checks the same thing.
    const origin = globalThis.location?.origin;
    if (typeof origin === "string") params.origin = origin;
    const url = withParams(this._url, params);
    url.protocol = url.protocol === "wss:" ? "https:" : "http:";
    const abort = typeof AbortController === "function" ? new AbortController() : null;
    const timer = this._clock.setTimeout(() => abort?.abort(), this._opts.requestTimeout);
    try {
      const res = await fetchFn(url.href, { cache: "no-store", signal: abort?.signal });
      if (res.status === 204) return { status: 204 };
      return await refusalOf(res, "handshake");
    } catch {
      return null; // the probe failed too: the node is down or unreachable
    } finally {
      this._clock.clearTimeout(timer);
    }
  }

  /**
   * Counts a token that could not be had or was refused; gives up after
   * maxAuthFailures in a row, so a broken getToken or a revoked key cannot
   * turn into a retry storm.
   */
  _onAuthFailure(error) {
    this._authFailures += 1;
    if (this._authFailures >= this._opts.maxAuthFailures) {
      this._stop({ error });
      return;
    }
    const gen = this._gen;
    this._emit("error", error);
    // After a probed 401 the socket's close already said "disconnected".
    if (this._state !== "disconnected") this._setState("disconnected", { error });
    if (gen === this._gen) this._scheduleReconnect(this._nextDelay());
  }

  /**
   * Ends the connection for good (until connect()): closes the socket,
   * cancels every timer, rejects pending commands and unsettled `ready`s.
   */
  _stop({ code, reason, error, rejectWith }) {
    this._gen += 1;
    this._active = false;
    const ws = this._ws;
    this._ws = null;
    this._opened = false;
    this._welcomed = false;
    if (ws) {
      detach(ws);
      try {
        ws.close(CLOSE.normal, "client stopped");
      } catch {
        // Already closed.
      }
    }
    this._clearTimer("reconnect");
    this._clearConnectionTimers();
    const rejection = rejectWith ?? error;
    this._rejectPending(rejection);
    for (const sub of this._subs.values()) {
      sub._connectionLost();
      sub._rejectReady(rejection);
    }
    if (error) this._emit("error", error);
    this._setState("stopped", { code, reason, error });
  }

  _clearConnectionTimers() {
    this._clearTimer("connect");
    this._clearTimer("fallback");
    this._clearTimer("ping");
    this._clearTimer("refresh");
  }

  _clearTimer(name) {
    if (this._timers[name] !== null) this._clock.clearTimeout(this._timers[name]);
    this._timers[name] = null;
  }

  _setState(state, details = {}) {
    this._state = state;
    const event = { state };
    for (const key of ["code", "reason", "error"]) {
      if (details[key] !== undefined) event[key] = details[key];
    }
    this._emit("state", event);
  }

  // ---- tokens -----------------------------------------------------------------

  /** The cached token while it is good, else a fresh one from getToken. */
  _usableToken() {
    const expired = this._tokenExpiresAt !== 0 && this._clock.now() >= this._tokenExpiresAt;
    if (this._token !== null && !expired) return Promise.resolve(this._token);
    return this._fetchToken().then((token) => {
      this._token = token;
      this._tokenExpiresAt = 0; // unknown until the welcome says
      return token;
    });
  }

  /**
   * Calls getToken once at a time, with a deadline (a hung token endpoint
   * must not freeze the client), and checks what comes back.
   */
  _fetchToken() {
    if (this._tokenPromise) return this._tokenPromise;
    const call = new Promise((resolve, reject) => {
      const timer = this._clock.setTimeout(
        () => reject(new SwitchboardError(CODES.badToken, `getToken did not settle within ${this._opts.requestTimeout} ms`)),
        this._opts.requestTimeout,
      );
      Promise.resolve()
        .then(() => this._opts.getToken())
        .then(
          (token) => {
            if (typeof token !== "string" || token.trim() === "") {
              reject(new SwitchboardError(CODES.badToken, `getToken must resolve with a non-empty string, got ${describe(token)}`));
            } else {
              resolve(token);
            }
          },
          (err) => {
            reject(
              err instanceof SwitchboardError
                ? err
                : new SwitchboardError(CODES.badToken, `getToken failed: ${err?.message ?? String(err)}`, { cause: err }),
            );
          },
        )
        .finally(() => this._clock.clearTimeout(timer));
    });
    this._tokenPromise = call;
    const clear = () => {
      if (this._tokenPromise === call) this._tokenPromise = null;
    };
    call.then(clear, clear);
    return call;
  }

  /** Refresh at 80% of the lifetime the server announced. */
  _scheduleRefresh(expiresIn) {
    this._clearTimer("refresh");
    this._refreshAttempt = 0;
    if (typeof expiresIn !== "number" || !(expiresIn >= 0)) {
      this._tokenExpiresAt = 0; // unknown: no refresh, 4001 leads to a new token
      return;
    }
    this._tokenExpiresAt = this._clock.now() + expiresIn * 1000;
    this._timers.refresh = this._clock.setTimeout(() => this._refresh(), clampDelay(expiresIn * 800));
  }

  async _refresh() {
    this._timers.refresh = null;
    const gen = this._gen;
    let token;
    try {
      token = await this._fetchToken();
      if (gen !== this._gen) return;
      const expiresAt = this._tokenExpiresAt;
      const result = await this._command({ type: "refresh", token });
      if (gen !== this._gen) return;
      this._token = token;
      // A getToken that hands out the same short-lived token again would
      // make every refresh due at once: a loop. Back off instead.
      if (this._clock.now() + result.expires_in * 1000 <= expiresAt) {
        throw new SwitchboardError(CODES.badToken, "getToken returned a token that expires no later than the current one");
      }
      this._scheduleRefresh(result.expires_in);
    } catch (err) {
      if (gen !== this._gen) return;
      this._emit("error", err);
      this._retryRefresh();
    }
  }

  /** Retries with backoff while the session lives; after expiry 4001 takes over. */
  _retryRefresh() {
    if (!this._welcomed) return;
    const { min, max } = this._opts.backoff;
    const exponent = Math.min(this._refreshAttempt++, MAX_BACKOFF_EXPONENT);
    const delay = this._clock.random() * Math.min(max, min * 2 ** exponent);
    if (this._clock.now() + delay >= this._tokenExpiresAt) return;
    this._timers.refresh = this._clock.setTimeout(() => this._refresh(), clampDelay(delay));
  }

  // ---- frames ------------------------------------------------------------------

  _onFrame(raw) {
    const frame = parseFrame(raw);
    if (!frame) {
      this.stats.unknownFrames += 1;
      return;
    }
    switch (frame.type) {
      case "welcome":
        return this._onWelcome(frame);
      case "reply":
        return this._onReply(frame);
      case "error":
        return this._onErrorFrame(frame);
      case "message":
      case "join":
      case "leave":
      case "reset":
        return this._onChannelFrame(frame);
      case "subscription":
        return this._onSubscriptionFrame(frame);
      case "close":
        return this._onCloseFrame(frame);
      default:
        this.stats.unknownFrames += 1;
    }
  }

  /**
   * SSE: a channel of the stream's request was subscribed (`result`, as the
   * subscribe reply carries it) or refused (`error`). Handled exactly as a
   * subscribe reply on WebSocket, with the position the stream resumed from.
   */
  _onSubscriptionFrame(frame) {
    if (!(this._ws instanceof SseConnection) || typeof frame.channel !== "string") {
      this.stats.unknownFrames += 1;
      return;
    }
    const entry = this._streamSubs.find((e) => e.sub.channel === frame.channel);
    const sub = entry?.sub;
    if (!entry || this._subs.get(frame.channel) !== sub || sub._state !== "subscribing") {
      // Unsubscribed while the stream was being opened: the server holds
      // the channel, so leave it there too.
      if (!frame.error && this._subs.get(frame.channel) === undefined) {
        this._command({ type: "unsubscribe", channel: frame.channel }).catch(() => {});
      }
      return;
    }
    if (frame.error && typeof frame.error === "object") {
      this._onSubscribeFailed(sub, new SwitchboardError(String(frame.error.code ?? "internal"), String(frame.error.message ?? "")));
    } else {
      const result = frame.result && typeof frame.result === "object" ? frame.result : {};
      sub._onSubscribed(result, entry.since);
    }
  }

  /** SSE: the server's last event, standing for a WebSocket close frame. */
  _onCloseFrame(frame) {
    const conn = this._ws;
    if (!(conn instanceof SseConnection) || typeof frame.code !== "number") {
      this.stats.unknownFrames += 1;
      return;
    }
    detach(conn);
    conn.close();
    this._onClosed(frame.code, typeof frame.reason === "string" ? frame.reason : "", { handshakeFailed: false });
  }

  /**
   * The subscriptions a 400 refusal of the stream is about: the one it
   * names (`channel "x": ...`, a malformed name), or those beyond the
   * node's limit (`a stream names at most N channels ...`: the latest
   * ones, as a WebSocket would refuse the subscribes past the limit).
   * None when it is about something else.
   */
  _refusedSubscriptions(error) {
    const message = error?.message ?? "";
    const named = /^channel ("(?:[^"\\]|\\.)*")/.exec(message);
    if (named) {
      let channel;
      try {
        channel = JSON.parse(named[1]);
      } catch {
        return [];
      }
      const sub = this._subs.get(channel);
      return sub ? [sub] : [];
    }
    const limit = /at most (\d+) channels/.exec(message);
    if (limit) return [...this._subs.values()].slice(Number(limit[1]));
    return [];
  }

  _onWelcome(frame) {
    if (this._welcomed || typeof frame.connection_id !== "string") {
      this.stats.unknownFrames += 1;
      return;
    }
    const ws = this._ws;
    this._welcomed = true;
    this._clearTimer("connect");
    this._clearTimer("fallback");
    this._authFailures = 0;
    this._attemptAtConnect = this._attempt;
    this._attempt = 0;
    this._connectedAt = this._clock.now();
    this.stats.connects += 1;
    if (this.stats.connects > 1) this.stats.reconnects += 1;
    this._scheduleRefresh(frame.expires_in);
    this._schedulePing();
    if (ws instanceof SseConnection) {
      // The stream subscribed what it named (its `subscription` events
      // follow); a channel subscribed since it was opened needs a new one.
      ws.connectionId = frame.connection_id;
      const named = new Set(this._streamSubs.map((e) => e.sub));
      if ([...this._subs.values()].some((sub) => !named.has(sub))) this._queueReopen();
    } else {
      for (const sub of this._subs.values()) this._sendSubscribe(sub);
    }
    const welcome = {
      connection_id: frame.connection_id,
      node_id: frame.node_id,
      user: frame.user,
      transport: this.transport,
      format: this._wireFormat,
    };
    if (frame.expires_in !== undefined) welcome.expires_in = frame.expires_in;
    this._emit("welcome", welcome);
    // A welcome listener may have called disconnect().
    if (this._ws === ws) this._setState("connected");
  }

  _onReply(frame) {
    const pending = this._pending.get(frame.id);
    if (!pending) {
      this.stats.staleReplies += 1;
      return;
    }
    this._pending.delete(frame.id);
    this._clock.clearTimeout(pending.timer);
    if (frame.error && typeof frame.error === "object") {
      pending.reject(new SwitchboardError(String(frame.error.code ?? "internal"), String(frame.error.message ?? "")));
    } else {
      // The SDK's own hook runs before the next frame is read, so what
      // follows the reply (a replay, live messages) meets the state the
      // reply set; the promise settles later, in a microtask.
      pending.onResult?.(frame.result ?? {});
      pending.resolve(frame.result ?? {});
    }
  }

  _onErrorFrame(frame) {
    const err = frame.error && typeof frame.error === "object" ? frame.error : {};
    this._emit("error", new SwitchboardError(String(err.code ?? "internal"), String(err.message ?? "error frame from the server")));
  }

  _onChannelFrame(frame) {
    if (typeof frame.channel !== "string") {
      this.stats.unknownFrames += 1;
      return;
    }
    // Frames for a channel we left (an unsubscribe in flight) are dropped.
    this._subs.get(frame.channel)?._onFrame(frame);
  }

  // ---- commands ----------------------------------------------------------------

  /**
   * Sends a command with a fresh id; the promise settles with its reply, or
   * rejects "offline" at once when not connected, "timeout" after
   * requestTimeout, "disconnected" if the socket closes first.
   */
  _command(frame, onResult) {
    if (!this._welcomed) {
      return Promise.reject(new SwitchboardError(CODES.offline, `not connected (state: ${this._state}); the command was not sent`));
    }
    if (this._pending.size >= this._opts.maxPending) {
      return Promise.reject(new SwitchboardError(CODES.overloaded, `${this._pending.size} commands are already waiting for replies`));
    }
    const id = this._nextId++;
    // A msgpack WebSocket gets a binary frame (Uint8Array); JSON and SSE text.
    const text = this._wireFormat === "msgpack" ? encodeMsgpack({ ...frame, id }) : encode({ ...frame, id });
    const problem = text instanceof SwitchboardError ? text : this._checkSendable(text);
    if (problem) return Promise.reject(problem);
    return new Promise((resolve, reject) => {
      const timer = this._clock.setTimeout(() => {
        this._pending.delete(id);
        reject(new SwitchboardError(CODES.timeout, `no reply to ${frame.type} within ${this._opts.requestTimeout} ms`));
      }, this._opts.requestTimeout);
      this._pending.set(id, { resolve, reject, timer, onResult });
      try {
        if (this._ws instanceof SseConnection) {
          // `refresh` authenticates with the new token: the current one may
          // be about to expire.
          this._ws.command(text, id, frame.type === "refresh" ? frame.token : this._token);
        } else {
          this._ws.send(text);
        }
      } catch (err) {
        this._pending.delete(id);
        this._clock.clearTimeout(timer);
        reject(new SwitchboardError(CODES.disconnected, `send failed: ${err.message}`, { cause: err }));
      }
    });
  }

  /** The gateway closes the connection (1009) for an oversized frame: refuse it here. */
  _checkSendable(text) {
    const tooLarge = typeof text === "string" ? exceedsBytes(text, this._opts.maxFrameBytes) : text.byteLength > this._opts.maxFrameBytes;
    if (tooLarge) {
      return new SwitchboardError(CODES.tooLarge, `the frame exceeds ${this._opts.maxFrameBytes} bytes`);
    }
    // The socket's own send buffer is unbounded; a stalled network must not
    // grow it forever.
    if (this._ws.bufferedAmount > this._opts.maxBufferedBytes) {
      return new SwitchboardError(CODES.overloaded, `${this._ws.bufferedAmount} bytes are waiting to be sent`);
    }
    return null;
  }

  _rejectPending(error) {
    const pending = [...this._pending.values()];
    this._pending.clear();
    for (const p of pending) {
      this._clock.clearTimeout(p.timer);
      p.reject(error);
    }
  }

  _sendSubscribe(sub) {
    if (this._ws instanceof SseConnection) {
      // A stream's channels are named when it opens: open a new one.
      sub._subscribing();
      this._queueReopen();
      return;
    }
    const frame = { type: "subscribe", channel: sub.channel };
    const since = sub._position;
    if (since) frame.since = { offset: since.offset, epoch: since.epoch };
    const gen = this._gen;
    sub._subscribing();
    const onResult = (result) => {
      if (gen === this._gen) sub._onSubscribed(result, since);
    };
    this._command(frame, onResult).then(
      () => {},
      (err) => {
        if (gen === this._gen) this._onSubscribeFailed(sub, err);
      },
    );
  }

  /**
   * Asks for the next page of a subscription catching up after a cut
   * replay (see Subscription._catchUp). The page is handled as its reply is
   * read, in order with the frames around it.
   */
  _sendCatchUpPage(sub, catchUp) {
    const gen = this._gen;
    // The first page is asked for as the subscribe reply is read, before
    // the replay that follows it: start after the replay.
    const since = { offset: Math.max(sub._position.offset, catchUp.replayedTo), epoch: catchUp.epoch };
    const frame = { type: "history", channel: sub.channel, since, limit: CATCH_UP_PAGE };
    const onResult = (result) => {
      if (gen === this._gen) sub._onCatchUpPage(catchUp, result);
    };
    this._command(frame, onResult).then(
      () => {},
      (err) => {
        if (gen === this._gen) this._onCatchUpFailed(sub, catchUp, err);
      },
    );
  }

  _onCatchUpFailed(sub, catchUp, err) {
    if (sub._catchUp !== catchUp) return; // finished, reset or unsubscribed meanwhile
    if (err.code === CODES.disconnected || err.code === CODES.offline) return; // resumes from the position
    if (TRANSIENT_SUBSCRIBE_ERRORS.has(err.code)) {
      sub._notifyError(err);
      sub._retryTimer = this._clock.setTimeout(() => {
        sub._retryTimer = null;
        if (this._welcomed && sub._catchUp === catchUp) this._sendCatchUpPage(sub, catchUp);
      }, clampDelay(sub._nextRetryDelay(this._opts.backoff, this._clock.random())));
      return;
    }
    // A timeout or an answer retrying cannot fix: start over. The resubscribe
    // resumes from the position the pages reached, so nothing is lost.
    sub._notifyError(err);
    if (this._ws) this._abandon(this._ws, `history catch-up failed: ${err.code}`, { handshakeFailed: false });
  }

  _onSubscribeFailed(sub, err) {
    if (err.code === CODES.disconnected || err.code === CODES.offline) return; // resubscribed on reconnect
    if (this._subs.get(sub.channel) !== sub) return; // unsubscribed meanwhile
    if (err.code === CODES.timeout) {
      // The server answers commands in order, so a missing reply means the
      // connection is unhealthy; and a blind retry could meet a subscription
      // the server did make. Start over: reconnect and resubscribe with since.
      if (this._ws) this._abandon(this._ws, "subscribe timed out", { handshakeFailed: false });
      return;
    }
    if (TRANSIENT_SUBSCRIBE_ERRORS.has(err.code)) {
      sub._notifyError(err);
      sub._retryTimer = this._clock.setTimeout(() => {
        sub._retryTimer = null;
        if (this._welcomed && this._subs.get(sub.channel) === sub) this._sendSubscribe(sub);
      }, clampDelay(sub._nextRetryDelay(this._opts.backoff, this._clock.random())));
      return;
    }
    // forbidden, bad_request, ...: retrying cannot help.
    this._subs.delete(sub.channel);
    sub._fail(err);
  }

  /**
   * SSE: reopens the stream (with every subscription, resuming from their
   * positions) at the end of the current task, so that several subscribe()
   * calls in a row cost one reopen.
   */
  _queueReopen() {
    if (this._reopenQueued) return;
    this._reopenQueued = true;
    const gen = this._gen;
    queueMicrotask(() => {
      if (!this._reopenQueued) return;
      this._reopenQueued = false;
      if (gen === this._gen) this._reopen();
    });
  }

  /**
   * Ends the stream and opens the next one at once, with the cached token.
   * No backoff and no `disconnected` state: nothing failed. The commands in
   * flight are HTTP requests whose answers come back by themselves; new
   * commands reject "offline" until the new stream's welcome.
   */
  _reopen() {
    const conn = this._ws;
    if (!(conn instanceof SseConnection) || !this._welcomed) return;
    detach(conn);
    conn.close();
    this._ws = null;
    this._opened = false;
    this._welcomed = false;
    this._clearConnectionTimers();
    for (const sub of this._subs.values()) sub._connectionLost();
    this._startAttempt();
  }

  _unsubscribe(sub) {
    if (this._subs.get(sub.channel) === sub) this._subs.delete(sub.channel);
    if (!this._welcomed) return Promise.resolve();
    return this._command({ type: "unsubscribe", channel: sub.channel }).then(
      () => undefined,
      (err) => {
        // The connection ended first: the server dropped the subscription
        // with it, and the SDK will not resubscribe. Done either way.
        if (err.code !== CODES.disconnected && err.code !== CODES.offline) throw err;
      },
    );
  }

  _schedulePing() {
    if (!(this._opts.pingInterval > 0)) return;
    this._timers.ping = this._clock.setTimeout(() => {
      this._timers.ping = null;
      const ws = this._ws;
      this.ping().then(
        () => {
          if (this._ws === ws) this._schedulePing();
        },
        (err) => {
          // No reply in time: the socket is dead even if it looks open (a
          // proxy or NAT dropped it silently).
          if (err.code === CODES.timeout && ws) this._abandon(ws, "ping timeout");
          else if (this._ws === ws && ws) this._schedulePing();
        },
      );
    }, clampDelay(this._opts.pingInterval));
  }

  // ---- events --------------------------------------------------------------------

  _emit(event, payload) {
    const set = this._listeners.get(event);
    if (!set) return;
    for (const listener of [...set]) {
      try {
        listener(payload);
      } catch (err) {
        if (event !== "error") this._emit("error", handlerError(err));
        // A throwing error listener is swallowed: no loop, no crash.
      }
    }
  }

  /** Calls an application callback; its exception becomes an `error` event. */
  _callHandler(fn, ...args) {
    if (typeof fn !== "function") return;
    try {
      fn(...args);
    } catch (err) {
      this._emit("error", handlerError(err));
    }
  }
}

/**
 * One channel's subscription. It survives reconnects: the SDK resubscribes
 * with `since` set to the last position it saw and drops duplicates.
 */
export class Subscription {
  constructor(client, channel, handlers) {
    this._client = client;
    this.channel = channel;
    this._handlers = handlers ?? {};
    this._state = "subscribing"; // | "subscribed" | "unsubscribed" | "failed"
    this._position = null; // {offset, epoch} of the last message seen
    // After a cut replay (recovered: false with replayed_to): {until, epoch}
    // while the rest is paged through `history`; null otherwise.
    this._catchUp = null;
    this._everSubscribed = false;
    this._retryAttempt = 0;
    this._retryTimer = null;
    this._readySettled = false;
    this.ready = new Promise((resolve, reject) => {
      this._resolveReady = resolve;
      this._rejectReadyFn = reject;
    });
    // An application that never awaits `ready` must not get an unhandled
    // rejection (which ends a Node process).
    this.ready.catch(() => {});
  }

  /** "subscribing" | "subscribed" | "unsubscribed" | "failed" */
  get state() {
    return this._state;
  }

  /** The last position seen, {offset, epoch}, or null (no history, or not yet). */
  get position() {
    return this._position ? { ...this._position } : null;
  }

  publish(data) {
    return this._client.publish(this.channel, data);
  }

  presence() {
    return this._client.presence(this.channel);
  }

  history(options) {
    return this._client.history(this.channel, options);
  }

  /** Ends the subscription; resolves once the server confirmed (at once when offline). */
  unsubscribe() {
    if (this._state === "unsubscribed" || this._state === "failed") return Promise.resolve();
    this._state = "unsubscribed";
    this._catchUp = null;
    this._cancelRetry();
    this._rejectReady(new SwitchboardError(CODES.unsubscribed, `unsubscribed from ${this.channel}`));
    return this._client._unsubscribe(this);
  }

  // ---- driven by the client ----

  _subscribing() {
    this._cancelRetry();
    if (this._state === "subscribed") this._state = "subscribing";
  }

  _connectionLost() {
    // The resubscribe resumes from the position reached, pages included.
    this._catchUp = null;
    this._cancelRetry();
    this._retryAttempt = 0;
    if (this._state === "subscribed") this._state = "subscribing";
  }

  _onSubscribed(result, since) {
    if (this._state !== "subscribing") return;
    this._state = "subscribed";
    this._retryAttempt = 0;
    const resumed = this._everSubscribed;
    this._everSubscribed = true;
    const hasPosition = typeof result.offset === "number" && typeof result.epoch === "string";
    // A cut replay: the messages after `since` up to replayed_to follow,
    // the rest up to the reply's offset are paged through `history`.
    const cut =
      hasPosition &&
      since &&
      result.recovered === false &&
      Number.isSafeInteger(result.replayed_to) &&
      result.epoch === since.epoch &&
      result.replayed_to >= since.offset &&
      result.replayed_to <= result.offset;
    // recovered:true (or a cut replay) → the missed messages follow and
    // advance the position from `since`; otherwise the reply's position is
    // where we stand.
    if (hasPosition && !(since && (result.recovered === true || cut))) {
      this._position = { offset: result.offset, epoch: result.epoch };
    }
    if (!this._readySettled) {
      this._readySettled = true;
      this._resolveReady(result);
    }
    if (cut) {
      // onRecover comes once the pages caught up (or failed to).
      this._catchUp = { until: result.offset, epoch: result.epoch, replayedTo: result.replayed_to, dropped: 0 };
      this._client._sendCatchUpPage(this, this._catchUp);
      return;
    }
    if (hasPosition) {
      this._client._callHandler(this._handlers.onRecover, {
        recovered: since ? result.recovered === true : true,
        offset: result.offset,
        epoch: result.epoch,
      });
    } else if (resumed) {
      // A channel without history cannot replay what was published while
      // we were away: tell the application to reload.
      this._client._callHandler(this._handlers.onRecover, { recovered: false });
    }
  }

  _onFrame(frame) {
    if (this._state === "unsubscribed" || this._state === "failed") return;
    const client = this._client;
    switch (frame.type) {
      case "message": {
        if (typeof frame.offset === "number" && this._position) {
          if (frame.offset <= this._position.offset) {
            client.stats.duplicates += 1;
            return;
          }
          // Catching up, only the next offset goes out (the cut replay);
          // live messages beyond it are dropped here and come with a
          // history page, since each page reads up to the channel's latest
          // offset and is read after them. On SSE a page's answer comes on
          // its own HTTP request and may overtake them: the highest one
          // dropped is noted, and paging goes on until past it.
          if (this._catchUp && frame.offset !== this._position.offset + 1) {
            this._catchUp.dropped = Math.max(this._catchUp.dropped, frame.offset);
            return;
          }
          this._position.offset = frame.offset;
        }
        client.stats.messages += 1;
        client._callHandler(this._handlers.onMessage, frame.data, { channel: this.channel, offset: frame.offset });
        return;
      }
      case "join":
      case "leave": {
        const member = { user: frame.user, connection_id: frame.connection_id, info: frame.info ?? null };
        client._callHandler(frame.type === "join" ? this._handlers.onJoin : this._handlers.onLeave, member);
        return;
      }
      case "reset": {
        if (typeof frame.offset !== "number" || typeof frame.epoch !== "string") {
          client.stats.unknownFrames += 1;
          return;
        }
        this._position = { offset: frame.offset, epoch: frame.epoch };
        this._catchUp = null; // the stream's past is gone: nothing left to page
        client._callHandler(this._handlers.onReset, { offset: frame.offset, epoch: frame.epoch });
        return;
      }
    }
  }

  /**
   * A `history` page while catching up after a cut replay: its messages go
   * out in order (those at or below the position are dropped), then either
   * the position reached the page's latest offset (caught up: live
   * messages flow again, onRecover says recovered) or the next page is
   * asked for. A page that does not continue the position means messages
   * were trimmed meanwhile: onRecover says not recovered, and the page's
   * position is taken, as after any recovered: false.
   */
  _onCatchUpPage(catchUp, result) {
    if (this._catchUp !== catchUp || this._state !== "subscribed") return;
    const client = this._client;
    const top = result.offset;
    const page = typeof top === "number" && typeof result.epoch === "string" ? { offset: top, epoch: result.epoch } : null;
    if (!page || page.epoch !== catchUp.epoch || result.recovered !== true) {
      this._endCatchUp(false, page);
      return;
    }
    let progressed = false;
    for (const message of Array.isArray(result.messages) ? result.messages : []) {
      const offset = message?.offset;
      if (typeof offset !== "number" || offset <= this._position.offset) continue;
      if (offset !== this._position.offset + 1) {
        // A hole the page itself shows: report it rather than skip it.
        this._endCatchUp(false, page);
        return;
      }
      this._position.offset = offset;
      progressed = true;
      client.stats.messages += 1;
      client.stats.paged += 1;
      client._callHandler(this._handlers.onMessage, message.data, { channel: this.channel, offset });
      if (this._catchUp !== catchUp) return; // a handler unsubscribed or disconnected
    }
    if (this._position.offset >= top && catchUp.dropped <= this._position.offset) {
      this._endCatchUp(true, null);
    } else if (progressed || this._position.offset >= top) {
      client._sendCatchUpPage(this, catchUp);
    } else {
      // History holds less than its own latest offset says: messages expired.
      this._endCatchUp(false, page);
    }
  }

  /**
   * Ends a catch-up and tells the application: recovered (everything up to
   * the subscribe reply's offset was delivered), or not, with `page`'s
   * position (when known) taken as ours, as after any recovered: false.
   */
  _endCatchUp(recovered, page) {
    const catchUp = this._catchUp;
    this._catchUp = null;
    if (page) this._position = { ...page };
    const at = recovered || !page ? { offset: catchUp.until, epoch: catchUp.epoch } : page;
    this._client._callHandler(this._handlers.onRecover, { recovered, offset: at.offset, epoch: at.epoch });
  }

  _notifyError(err) {
    this._client._callHandler(this._handlers.onError, err);
  }

  _fail(err) {
    this._state = "failed";
    this._cancelRetry();
    this._notifyError(err);
    this._rejectReady(err);
  }

  _rejectReady(err) {
    if (this._readySettled) return;
    this._readySettled = true;
    this._rejectReadyFn(err);
  }

  _nextRetryDelay({ min, max }, random) {
    const exponent = Math.min(this._retryAttempt++, MAX_BACKOFF_EXPONENT);
    return random * Math.min(max, min * 2 ** exponent);
  }

  _cancelRetry() {
    if (this._retryTimer !== null) this._client._clock.clearTimeout(this._retryTimer);
    this._retryTimer = null;
  }
}

// ---- the SSE transport ---------------------------------------------------------

/**
 * One server-sent events stream (GET /sse) and its commands (POST
 * /sse/command), behind the part of the WebSocket interface the client
 * uses: onopen, onmessage({data}), onclose({code, reason, refusal}),
 * close(), bufferedAmount; `command()` stands for send().
 *
 * Built on `fetch` and a small SSE parser rather than `EventSource`:
 * EventSource cannot send headers, so the token would have to travel in
 * the URL (and into proxy logs) instead of `Authorization`; it picks its
 * own `Last-Event-ID` (the last id it saw, which is not the SDK's tracked
 * positions after a reopen with another channel list) and reconnects by
 * itself on its own schedule, which would fight the SDK's backoff and
 * close-code rules; and it hides the HTTP status of a refusal, which the
 * SDK needs (401 new token, 403 stop, 429 wait). A fetch stream works the
 * same in browsers and Node 20+, with no dependency.
 */
class SseConnection {
  constructor({ url, commandUrl, token, lastEventId, fetch, clock, requestTimeout, onReply }) {
    this.url = url;
    this.commandUrl = commandUrl;
    this.connectionId = null; // set from the welcome
    this.bufferedAmount = 0; // bytes of commands whose answer has not come yet
    this.lastEventId = lastEventId;
    this.onopen = this.onmessage = this.onclose = this.onerror = null;
    this._token = token;
    this._fetch = fetch;
    this._clock = clock;
    this._requestTimeout = requestTimeout;
    this._onReply = onReply;
    this._abort = typeof AbortController === "function" ? new AbortController() : null;
    this._reader = null;
    this._closed = false;
    // Parser state: text not yet split into lines, and the event's data lines.
    this._buf = "";
    this._data = [];
    this._dataChars = 0;
  }

  start() {
    this._run().catch((err) => this._end(CLOSE.abnormal, `the stream failed: ${err?.message ?? String(err)}`));
  }

  /** Stops reading and releases the request. No onclose: the caller knows. */
  close() {
    if (this._closed) return;
    this._closed = true;
    try {
      this._abort?.abort();
    } catch {
      // Nothing to abort.
    }
    this._reader?.cancel().catch(() => {});
  }

  async _run() {
    const headers = { accept: "text/event-stream", authorization: `Bearer ${this._token}` };
    if (this.lastEventId !== null) headers["last-event-id"] = this.lastEventId;
    let res;
    try {
      res = await this._fetch(this.url, { headers, cache: "no-store", signal: this._abort?.signal });
    } catch (err) {
      this._end(CLOSE.abnormal, `the stream request failed: ${err?.message ?? String(err)}`);
      return;
    }
    if (this._closed) {
      res.body?.cancel?.().catch?.(() => {});
      return;
    }
    const type = res.headers?.get?.("content-type") ?? "";
    if (res.status !== 200 || !/^text\/event-stream/i.test(type) || typeof res.body?.getReader !== "function") {
      const refusal = await refusalOf(res, "stream");
      this._end(CLOSE.abnormal, `the stream was refused with HTTP ${res.status}`, { refusal });
      return;
    }
    this.onopen?.({});
    const reader = res.body.getReader();
    this._reader = reader;
    const decoder = new TextDecoder();
    for (;;) {
      let chunk;
      try {
        chunk = await reader.read();
      } catch (err) {
        this._end(CLOSE.abnormal, `the stream broke: ${err?.message ?? String(err)}`);
        return;
      }
      if (this._closed) return;
      if (chunk.done) break;
      this._feed(decoder.decode(chunk.value, { stream: true }));
      if (this._closed) return; // a `close` event, or an event too long
    }
    this._feed(decoder.decode());
    // Without a `close` event first: the node died, or a proxy cut it.
    this._end(CLOSE.abnormal, "the stream ended without a close event");
  }

  /** Splits text into lines (CRLF, LF or CR, as the SSE format allows). */
  _feed(text) {
    const buf = this._buf + text;
    const eol = /\r\n|\r|\n/g;
    let start = 0;
    let match;
    while ((match = eol.exec(buf)) !== null) {
      // A CR at the very end may be the first half of a CRLF: wait.
      if (match[0] === "\r" && match.index === buf.length - 1) break;
      this._line(buf.slice(start, match.index));
      start = match.index + match[0].length;
      if (this._closed) return;
    }
    this._buf = buf.slice(start);
    if (this._buf.length > MAX_SSE_EVENT_CHARS) {
      this._end(CLOSE.abnormal, `a stream line exceeds ${MAX_SSE_EVENT_CHARS} characters`);
    }
  }

  _line(line) {
    if (line === "") {
      this._dispatch();
      return;
    }
    if (line.charCodeAt(0) === 58) return; // ":" a comment: the heartbeat
    const colon = line.indexOf(":");
    const field = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? "" : line.slice(colon + 1);
    if (value.charCodeAt(0) === 32) value = value.slice(1);
    if (field === "data") {
      this._data.push(value);
      this._dataChars += value.length + 1;
      if (this._dataChars > MAX_SSE_EVENT_CHARS) {
        this._end(CLOSE.abnormal, `a stream event exceeds ${MAX_SSE_EVENT_CHARS} characters`);
      }
    } else if (field === "id") {
      // Kept for inspection; the SDK resumes from its own positions.
      if (!value.includes("\0")) this.lastEventId = value;
    }
    // `event` and `retry`: the gateway sends neither.
  }

  _dispatch() {
    if (this._data.length === 0) return;
    const data = this._data.join("\n");
    this._data = [];
    this._dataChars = 0;
    this.onmessage?.({ data });
  }

  _end(code, reason, extra = {}) {
    if (this._closed) return;
    this.close();
    this.onclose?.({ code, reason, ...extra });
  }

  /**
   * POSTs one command frame; its answer goes to onReply as a `reply` frame
   * with the command's id, whatever form the HTTP answer took. Throws when
   * the stream is not open (the caller rejects the command).
   */
  command(text, id, token) {
    if (this._closed || this.connectionId === null) throw new Error("the stream is not open");
    const bytes = text.length;
    this.bufferedAmount += bytes;
    const abort = typeof AbortController === "function" ? new AbortController() : null;
    const timer = this._clock.setTimeout(() => abort?.abort(), this._requestTimeout);
    const url = `${this.commandUrl}?connection=${encodeURIComponent(this.connectionId)}`;
    this._fetch(url, {
      method: "POST",
      headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
      body: text,
      cache: "no-store",
      signal: abort?.signal,
    })
      .then(
        (res) => this._onAnswer(res, id),
        (err) => {
          if (abort?.signal.aborted) return; // our deadline: the command already timed out
          // The node cannot be reached for a command: the stream to it is
          // no better. End it, as a failed WebSocket send would.
          this._end(CLOSE.abnormal, `a command request failed: ${err?.message ?? String(err)}`);
        },
      )
      .finally(() => {
        this.bufferedAmount -= bytes;
        this._clock.clearTimeout(timer);
      })
      .catch(() => {}); // an exception of a reply's handling has been reported there
  }

  async _onAnswer(res, id) {
    if (res.status === 204) {
      this._onReply({ type: "reply", id, result: {} });
      return;
    }
    const body = await res.json().catch(() => null);
    if (res.status === 200 && body?.type === "reply") {
      this._onReply(body);
      return;
    }
    if (res.status === 200 && body?.type === "error") {
      // A frame the server could not decode: its `error` frame answers it.
      this._onReply({ type: "reply", id, error: body.error && typeof body.error === "object" ? body.error : {} });
      return;
    }
    if (res.status === 404) {
      // No such stream on the node any more (it closed, or the node
      // restarted): the stream we read is over, whatever it still shows,
      // and the command did not run: for the application, the connection
      // closed before the reply.
      const why = `the stream is gone from its node: ${body?.message ?? "HTTP 404"}`;
      this._end(CLOSE.abnormal, why);
      this._onReply({ type: "reply", id, error: { code: CODES.disconnected, message: why } });
      return;
    }
    const code = typeof body?.error === "string" ? body.error : statusCode(res.status);
    const message = typeof body?.message === "string" ? body.message : `the command was refused with HTTP ${res.status}`;
    this._onReply({ type: "reply", id, error: { code, message } });
  }
}

/**
 * The SSE URLs for a WebSocket URL: same scheme family and host, the path's
 * last `/ws` replaced by `/sse` (so `wss://h/rt/ws` streams from
 * `https://h/rt/sse`), or `/sse` for another path; commands at `<stream>/command`.
 */
function sseUrls(wsUrl) {
  const stream = new URL(wsUrl.href);
  stream.protocol = stream.protocol === "wss:" ? "https:" : "http:";
  stream.search = "";
  stream.pathname = stream.pathname.endsWith("/ws") ? `${stream.pathname.slice(0, -3)}/sse` : "/sse";
  return { stream, command: `${stream.href}/command` };
}

/** {status, retryAfter, error} from a refused HTTP answer with the gateway's JSON body. */
async function refusalOf(res, what) {
  const body = await res.json().catch(() => ({}));
  const retryAfter = parseRetryAfter(res.headers?.get?.("retry-after"));
  const code = typeof body?.error === "string" ? body.error : statusCode(res.status);
  const message = typeof body?.message === "string" ? body.message : `${what} refused with HTTP ${res.status}`;
  return { status: res.status, retryAfter, error: new SwitchboardError(code, message, { status: res.status, retryAfter }) };
}

// ---- helpers ----------------------------------------------------------------------

function parseUrl(url) {
  let parsed;
  try {
    // Absolute URLs only: resolving against the page would turn a typo
    // ("ws//host/ws") into a path on the page's own host.
    parsed = new URL(String(url));
  } catch {
    throw new SwitchboardError(CODES.badUrl, `not a valid URL: ${describe(url)}`);
  }
  const schemes = { "ws:": "ws:", "wss:": "wss:", "http:": "ws:", "https:": "wss:" };
  if (!(parsed.protocol in schemes)) {
    throw new SwitchboardError(CODES.badUrl, `the URL must use ws:, wss:, http: or https:, got ${parsed.protocol}`);
  }
  if (parsed.hash !== "") {
    throw new SwitchboardError(CODES.badUrl, "the URL must not have a #fragment");
  }
  parsed.protocol = schemes[parsed.protocol];
  return parsed;
}

/** Whether `value` can be called with `new` (a class or a function, not an arrow function or an instance). */
function isConstructor(value) {
  if (typeof value !== "function") return false;
  try {
    // Throws exactly when `value` is not a constructor; constructs nothing.
    Reflect.construct(String, [], value);
    return true;
  } catch {
    return false;
  }
}

/** A short description of a wrong option value, for error messages. */
function describeValue(value) {
  if (typeof value === "function") return "a function that cannot be called with new (an arrow function or a method)";
  if (Array.isArray(value)) return "an array";
  if (typeof value === "object") {
    const name = value.constructor?.name;
    return name && name !== "Object" ? `an instance of ${name} (pass the class, not a socket)` : "an object";
  }
  return `${typeof value} ${JSON.stringify(value)}`;
}

function normalizeOptions(options) {
  if (typeof options?.getToken !== "function") {
    throw new SwitchboardError(CODES.badOptions, "options.getToken must be a function returning (a promise of) a JWT");
  }
  const transports = options.transports ?? DEFAULTS.transports;
  if (
    !Array.isArray(transports) ||
    transports.length === 0 ||
    transports.some((t) => !TRANSPORTS.includes(t)) ||
    new Set(transports).size !== transports.length
  ) {
    throw new SwitchboardError(
      CODES.badOptions,
      `options.transports must list one or more of "websocket", "sse", each once, in order of preference; got ${Array.isArray(transports) ? JSON.stringify(transports) : describeValue(transports)}`,
    );
  }
  const format = options.format ?? DEFAULTS.format;
  if (!FORMATS.includes(format)) {
    throw new SwitchboardError(
      CODES.badOptions,
      `options.format must be "json" or "msgpack", got ${typeof format === "string" ? JSON.stringify(format) : describeValue(format)}`,
    );
  }
  if (options.WebSocket != null && !isConstructor(options.WebSocket)) {
    throw new SwitchboardError(
      CODES.badOptions,
      `options.WebSocket must be a WebSocket class to construct sockets with (globalThis.WebSocket, or the ws package's WebSocket), not ${describeValue(options.WebSocket)}`,
    );
  }
  const WebSocketImpl = options.WebSocket ?? globalThis.WebSocket;
  if (transports.includes("websocket") && !isConstructor(WebSocketImpl)) {
    throw new SwitchboardError(
      CODES.badOptions,
      'no WebSocket implementation: this runtime has no globalThis.WebSocket; pass options.WebSocket, or run Node 20 with --experimental-websocket, or use transports: ["sse"]',
    );
  }
  const backoff = { ...DEFAULTS.backoff, ...options.backoff };
  const opts = {
    getToken: options.getToken,
    WebSocket: WebSocketImpl,
    fetch: options.fetch ?? (typeof globalThis.fetch === "function" ? globalThis.fetch.bind(globalThis) : undefined),
    clock: { ...defaultClock, ...options.clock },
    backoff,
    batch: options.batch ?? true,
    format,
    transports: Object.freeze([...transports]),
  };
  if (transports.includes("sse") && typeof opts.fetch !== "function") {
    throw new SwitchboardError(
      CODES.badOptions,
      'the "sse" transport needs fetch: this runtime has no globalThis.fetch; pass options.fetch, or leave "sse" out of options.transports',
    );
  }
  for (const key of ["pingInterval", "requestTimeout", "fallbackTimeout", "maxAuthFailures", "maxPending", "maxFrameBytes", "maxBufferedBytes"]) {
    opts[key] = options[key] ?? DEFAULTS[key];
  }
  const positive = {
    "backoff.min": backoff.min,
    "backoff.max": backoff.max,
    requestTimeout: opts.requestTimeout,
    fallbackTimeout: opts.fallbackTimeout,
    maxAuthFailures: opts.maxAuthFailures,
    maxPending: opts.maxPending,
    maxFrameBytes: opts.maxFrameBytes,
    maxBufferedBytes: opts.maxBufferedBytes,
  };
  for (const [key, value] of Object.entries(positive)) {
    if (typeof value !== "number" || !(value > 0)) {
      throw new SwitchboardError(CODES.badOptions, `options.${key} must be a positive number, got ${describe(value)}`);
    }
  }
  if (backoff.max < backoff.min) {
    throw new SwitchboardError(CODES.badOptions, "options.backoff.max must not be below backoff.min");
  }
  if (typeof opts.pingInterval !== "number" || opts.pingInterval < 0) {
    throw new SwitchboardError(CODES.badOptions, "options.pingInterval must be a number of milliseconds, 0 for off");
  }
  // Timers beyond 2^31-1 ms would fire at once.
  opts.requestTimeout = clampDelay(opts.requestTimeout);
  opts.fallbackTimeout = clampDelay(opts.fallbackTimeout);
  opts.pingInterval = clampDelay(opts.pingInterval);
  return opts;
}

/** A copy of `url` with query parameters set (URL-encoded). */
function withParams(url, params) {
  const copy = new URL(url.href);
  for (const [key, value] of Object.entries(params)) copy.searchParams.set(key, value);
  return copy;
}

/** A frame from JSON text, or one decoded already (MessagePack); null when not a frame. */
function parseFrame(raw) {
  let frame = raw;
  if (typeof raw === "string") {
    try {
      frame = JSON.parse(raw);
    } catch {
      return null;
    }
  }
  if (frame === null || typeof frame !== "object" || Array.isArray(frame) || typeof frame.type !== "string") return null;
  return frame;
}

function encode(frame) {
  try {
    return JSON.stringify(frame);
  } catch (err) {
    return new SwitchboardError("bad_request", `the command cannot be encoded as JSON: ${err.message}`, { cause: err });
  }
}

/**
 * A command as MessagePack (a Uint8Array, sent as a binary frame), or a
 * bad_request SwitchboardError for a value the encoder has no form for (a
 * function, a symbol, a BigInt). Values MessagePack has but JSON has not
 * (Uint8Array and ArrayBuffer as bin, Date as the timestamp extension,
 * NaN) are encoded, and the gateway refuses them with bad_request.
 */
function encodeMsgpack(frame) {
  try {
    const bytes = msgpackEncoder.encode(frame);
    if (bytes.byteLength > MSGPACK_BUFFER_KEPT) msgpackEncoder = newMsgpackEncoder();
    return bytes;
  } catch (err) {
    return new SwitchboardError("bad_request", `the command cannot be encoded as MessagePack: ${err.message}`, { cause: err });
  }
}

/** A binary frame's MessagePack map, or null (not MessagePack, or not a map). */
function decodeMsgpack(data) {
  let bytes;
  if (data instanceof ArrayBuffer) bytes = new Uint8Array(data);
  else if (ArrayBuffer.isView(data)) bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  else return null; // a Blob: the implementation ignored binaryType
  try {
    return msgpackDecoder.decode(bytes);
  } catch {
    return null;
  }
}

function exceedsBytes(text, limit) {
  // Each UTF-16 unit is at most 3 UTF-8 bytes: skip the encoding when it cannot matter.
  if (text.length * 3 <= limit) return false;
  return new TextEncoder().encode(text).length > limit;
}

function parseRetryAfter(value) {
  const seconds = Number.parseInt(value ?? "", 10);
  return Number.isFinite(seconds) && seconds > 0 ? seconds : 1;
}

function statusCode(status) {
  return { 401: CODES.unauthorized, 403: CODES.forbiddenOrigin, 429: CODES.rateLimited, 503: CODES.unavailable }[status] ?? "bad_request";
}

function clampDelay(ms) {
  return Math.min(Math.max(0, ms), MAX_TIMER_MS);
}

function detach(ws) {
  ws.onopen = ws.onmessage = ws.onclose = null;
  ws.onerror = () => {}; // some implementations throw on unhandled error events
}

function handlerError(err) {
  return new SwitchboardError(CODES.handlerError, `an application callback threw: ${err?.message ?? String(err)}`, { cause: err });
}

function describe(value) {
  if (typeof value === "string") return value === "" ? "an empty string" : JSON.stringify(value.slice(0, 40));
  if (value === null) return "null";
  return typeof value === "object" ? "an object" : `${typeof value} ${String(value)}`;
}
