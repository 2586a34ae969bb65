// Test harness (not a test file): starts a real gateway process, signs
// tokens for it, publishes through its server API, and provides the clocks
// and fake sockets the SDK's tests inject. No side effects on import.

import { spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import { existsSync, mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { createServer } from "node:net";
import * as http from "node:http";
import { createInterface } from "node:readline";

export const BINARY = fileURLToPath(new URL("../../../target/debug/switchboard", import.meta.url));
export const SECRET = "sdk-tests-hs256-secret-0123456789abcdef";
export const API_KEY = "sdk-tests-api-key-0123456789";

const START_TIMEOUT_MS = 15_000;
const MAX_LOG_LINES = 500; // kept for failure messages; older lines are dropped

const running = new Set();
process.on("exit", () => {
  for (const child of running) child.kill("SIGKILL");
});

/**
 * A free port below Linux's ephemeral range (32768-60999). Tests restart
 * nodes on the same port; a port the kernel also hands out as a source port
 * could be taken by another connection while the node is down, and the
 * restart would fail with "address in use".
 */
export async function restartablePort() {
  for (;;) {
    const port = 20000 + Math.floor(Math.random() * 12000);
    const free = await new Promise((resolve) => {
      const server = createServer();
      server.once("error", () => resolve(false));
      server.listen(port, "127.0.0.1", () => server.close(() => resolve(true)));
    });
    if (free) return port;
  }
}

/**
 * Starts `target/debug/switchboard` on 127.0.0.1 (by default on a free port
 * it can be restarted on) and resolves once it logs "listening". `env` adds
 * or overrides variables; `config`, TOML text, is passed as its config file
 * (for the settings that have no variable, such as namespaces).
 */
export async function startGateway({ port, env = {}, config } = {}) {
  if (!existsSync(BINARY)) {
    throw new Error(`${BINARY} is missing: run \`cargo build -p switchboard-gateway\` first`);
  }
  const args = [];
  if (config !== undefined) {
    const path = join(mkdtempSync(join(tmpdir(), "switchboard-sdk-")), "switchboard.toml");
    writeFileSync(path, config);
    args.push("--config", path);
  }
  const gateway = new Gateway(env, args);
  await gateway.start(port ?? (await restartablePort()));
  return gateway;
}

class Gateway {
  constructor(env, args = []) {
    this.args = args;
    this.env = {
      SWITCHBOARD_LOG_FORMAT: "json",
      SWITCHBOARD_JWT_HS256_SECRET: SECRET,
      SWITCHBOARD_API_KEY: API_KEY,
      SWITCHBOARD_DRAIN_WINDOW: "0s",
      SWITCHBOARD_CONN_RATE_PER_IP: "100000",
      SWITCHBOARD_CONN_BURST_PER_IP: "100000",
      SWITCHBOARD_MSG_RATE: "100000",
      SWITCHBOARD_MSG_BURST: "100000",
      ...env,
    };
    this.child = null;
    this.logs = [];
  }

  get wsUrl() {
    return `ws://${this.addr}/ws`;
  }

  get httpUrl() {
    return `http://${this.addr}`;
  }

  async start(port) {
    const child = spawn(BINARY, this.args, {
      env: { PATH: process.env.PATH, ...this.env, SWITCHBOARD_LISTEN: `127.0.0.1:${port}` },
      stdio: ["ignore", "ignore", "pipe"],
    });
    this.child = child;
    running.add(child);
    const exited = new Promise((resolve) => child.once("exit", (code, signal) => resolve({ code, signal })));
    this.exited = exited.then((status) => {
      running.delete(child);
      return status;
    });
    const listening = new Promise((resolve, reject) => {
      createInterface({ input: child.stderr }).on("line", (line) => {
        this.logs.push(line);
        if (this.logs.length > MAX_LOG_LINES) this.logs.shift();
        const entry = parseJson(line);
        if (entry?.message === "listening") resolve(entry.addr);
      });
      this.exited.then(({ code, signal }) =>
        reject(new Error(`gateway exited (code ${code}, signal ${signal}) before listening:\n${this.logs.join("\n")}`)),
      );
    });
    this.addr = await withTimeout(listening, START_TIMEOUT_MS, "gateway did not log listening");
    this.port = Number(this.addr.split(":").pop());
    return this;
  }

  /** Stops the process with a signal and waits until it has exited. */
  async kill(signal = "SIGKILL") {
    if (!this.child || this.child.exitCode !== null || this.child.signalCode !== null) return;
    this.child.kill(signal);
    await this.exited;
  }

  /** Kills the node (SIGKILL, no drain) and starts it again on the same port. */
  async restart() {
    await this.kill("SIGKILL");
    await this.start(this.port);
  }

  stop() {
    return this.kill("SIGKILL");
  }

  /** A server API call; resolves with {status, body}. */
  async api(method, path, body) {
    const res = await fetch(`${this.httpUrl}${path}`, {
      method,
      headers: { authorization: `Bearer ${API_KEY}`, "content-type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    return { status: res.status, body: await res.json() };
  }

  /** Publishes through the server API; resolves with the answer ({ok, offset, epoch}). */
  async publish(channel, data) {
    const { status, body } = await this.api("POST", "/api/publish", { channel, data });
    if (status !== 200) throw new Error(`publish answered ${status}: ${JSON.stringify(body)}`);
    return body;
  }
}

/** An HS256 JWT the harness's gateways accept; `claims` override the defaults. */
export function signToken(claims = {}, secret = SECRET) {
  const payload = {
    sub: "tester",
    exp: Math.floor(Date.now() / 1000) + 3600,
    channels: ["*"],
    publish: ["*"],
    ...claims,
  };
  const encode = (obj) => Buffer.from(JSON.stringify(obj)).toString("base64url");
  const unsigned = `${encode({ alg: "HS256", typ: "JWT" })}.${encode(payload)}`;
  const signature = createHmac("sha256", secret).update(unsigned).digest("base64url");
  return `${unsigned}.${signature}`;
}

// ---- waiting without sleeping ----------------------------------------------------

export function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/**
 * Records a Switchboard's events and lets a test wait for one matching a
 * predicate (already seen or still to come).
 */
export class Recorder {
  constructor(sb, events = ["state", "error", "welcome"]) {
    this.events = [];
    this.waiters = [];
    for (const name of events) sb.on(name, (payload) => this.push(name, payload));
  }

  push(name, payload) {
    const event = { name, payload };
    this.events.push(event);
    for (const waiter of [...this.waiters]) {
      if (waiter.match(event)) {
        this.waiters.splice(this.waiters.indexOf(waiter), 1);
        waiter.resolve(event.payload);
      }
    }
  }

  /** Resolves with the payload of the first event after index `from` that matches. */
  wait(match, { from = 0, timeout = 10_000, what = "event" } = {}) {
    const seen = this.events.slice(from).find(match);
    if (seen) return Promise.resolve(seen.payload);
    return withTimeout(new Promise((resolve) => this.waiters.push({ match, resolve })), timeout, what);
  }

  waitState(state, options = {}) {
    return this.wait((e) => e.name === "state" && e.payload.state === state, { what: `state ${state}`, ...options });
  }

  states() {
    return this.events.filter((e) => e.name === "state").map((e) => e.payload.state);
  }

  count(name) {
    return this.events.filter((e) => e.name === name).length;
  }

  get mark() {
    return this.events.length;
  }
}

/** A queue of values pushed by callbacks, awaited one at a time. */
export class Inbox {
  constructor() {
    this.items = [];
    this.waiters = [];
  }

  push = (...args) => {
    const item = args.length > 1 ? args : args[0];
    const waiter = this.waiters.shift();
    if (waiter) waiter(item);
    else this.items.push(item);
  };

  next(timeout = 10_000, what = "inbox item") {
    if (this.items.length > 0) return Promise.resolve(this.items.shift());
    return withTimeout(new Promise((resolve) => this.waiters.push(resolve)), timeout, what);
  }

  async take(n, timeout = 10_000) {
    const out = [];
    for (let i = 0; i < n; i++) out.push(await this.next(timeout, `item ${i + 1} of ${n}`));
    return out;
  }
}

// ---- clocks ------------------------------------------------------------------------

/**
 * A clock for the SDK's `clock` option. Timers with a delay of at most
 * `holdUpTo` ms are held until the test fires them (the backoff timers, when
 * holdUpTo >= backoff.max and requestTimeout > holdUpTo); longer ones run on
 * real timers unless `realTimers` is false. `now()` is the real time plus
 * `advance()`d milliseconds; `random()` returns the queued values in turn,
 * then `random` (a function) if given.
 */
export class TestClock {
  constructor({ holdUpTo = Infinity, realTimers = false, randoms = [], random } = {}) {
    this.holdUpTo = holdUpTo;
    this.realTimers = realTimers;
    this.randoms = [...randoms];
    this.fallbackRandom = random;
    this.randomCalls = 0;
    this.offset = 0;
    this.held = new Map(); // handle -> {fn, ms}
    this.heldLog = []; // every held delay, in order
    this.nextHandle = 1;
    this.waiters = [];
  }

  now = () => Date.now() + this.offset;

  random = () => {
    this.randomCalls += 1;
    if (this.randoms.length > 0) return this.randoms.shift();
    if (this.fallbackRandom) return this.fallbackRandom();
    throw new Error("TestClock: random() called with no value queued");
  };

  setTimeout = (fn, ms) => {
    if (ms <= this.holdUpTo) {
      const handle = { held: this.nextHandle++ };
      this.held.set(handle, { fn, ms });
      this.heldLog.push(ms);
      const waiter = this.waiters.shift();
      if (waiter) waiter();
      return handle;
    }
    return this.realTimers ? { real: setTimeout(fn, ms) } : { idle: true };
  };

  clearTimeout = (handle) => {
    if (!handle) return;
    if (handle.real) clearTimeout(handle.real);
    this.held.delete(handle);
  };

  advance(ms) {
    this.offset += ms;
  }

  /** Waits until a timer is held (and not cleared); resolves with its delay. */
  async nextHeld(timeout = 10_000) {
    for (;;) {
      const pending = [...this.held.values()];
      if (pending.length > 0) return pending[pending.length - 1].ms;
      await withTimeout(new Promise((resolve) => this.waiters.push(resolve)), timeout, "a held timer");
    }
  }

  /** Runs every held timer now. */
  fireHeld() {
    const timers = [...this.held.values()];
    this.held.clear();
    for (const { fn } of timers) fn();
    return timers.length;
  }
}

// ---- a fake WebSocket for protocol corner cases ------------------------------

/** Records every instance; the test plays the server. */
export class FakeSocket {
  static instances = [];

  constructor(url) {
    this.url = url;
    this.sent = [];
    this.readyState = 0;
    this.bufferedAmount = 0;
    this.closedWith = null;
    FakeSocket.instances.push(this);
  }

  static reset() {
    FakeSocket.instances = [];
  }

  static last() {
    return FakeSocket.instances[FakeSocket.instances.length - 1];
  }

  send(text) {
    this.sent.push(JSON.parse(text));
  }

  close(code, reason) {
    this.closedWith = { code, reason };
    this.readyState = 3;
  }

  // ---- the test's side ----

  open() {
    this.readyState = 1;
    this.onopen?.({});
  }

  /** Opens and sends the welcome frame. */
  accept(welcome = {}) {
    this.open();
    this.receive({ type: "welcome", connection_id: "fake.1", node_id: "fake", user: "tester", expires_in: 3600, ...welcome });
  }

  receive(frame) {
    this.onmessage?.({ data: typeof frame === "string" ? frame : JSON.stringify(frame) });
  }

  /** The handshake failed (Node 20 reports only an error). */
  fail() {
    this.onerror?.({});
  }

  serverClose(code, reason = "") {
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }

  /** Answers the last command sent with `result` (or an `error`). */
  reply(result, error) {
    const command = this.sent[this.sent.length - 1];
    this.receive(error ? { type: "reply", id: command.id, error } : { type: "reply", id: command.id, result });
    return command;
  }
}

function parseJson(line) {
  try {
    return JSON.parse(line);
  } catch {
    return null;
  }
}

/**
 * Waits for a condition the SDK makes true within a few turns of the event
 * loop (fake sockets and fetches settle in microtasks, not on timers).
 */
export async function until(condition, turns = 100) {
  for (let i = 0; i < turns && !condition(); i++) await new Promise((resolve) => setImmediate(resolve));
  if (!condition()) throw new Error(`condition not reached within ${turns} event-loop turns: ${condition}`);
}

// ---- a proxy in front of a gateway ------------------------------------------------

/**
 * A small HTTP proxy on 127.0.0.1 in front of `gateway` that forwards every
 * request, streaming both ways, and answers every WebSocket upgrade 403,
 * as a proxy that blocks WebSocket does. `requests`
 * lists what passed ({method, path, status}); `cutStreams()` drops the
 * open GET /sse responses as a network failure would (no close event).
 */
export async function startProxy(gateway) {
  const requests = [];
  const streams = new Set();
  const server = http.createServer((req, res) => {
    const entry = { method: req.method, path: req.url, status: null, upgrade: false };
    requests.push(entry);
    const upstream = http.request(
      { host: "127.0.0.1", port: gateway.port, method: req.method, path: req.url, headers: req.headers },
      (answer) => {
        entry.status = answer.statusCode;
        res.writeHead(answer.statusCode, answer.headers);
        res.flushHeaders();
        answer.pipe(res);
        if (req.url.startsWith("/sse?") || req.url === "/sse") {
          const stream = { res, answer };
          streams.add(stream);
          res.once("close", () => streams.delete(stream));
        }
      },
    );
    upstream.on("error", () => res.destroy());
    res.once("close", () => upstream.destroy());
    req.pipe(upstream);
  });
  server.on("upgrade", (req, socket) => {
    requests.push({ method: req.method, path: req.url, status: 403, upgrade: true });
    socket.end("HTTP/1.1 403 Forbidden\r\ncontent-type: text/plain\r\ncontent-length: 19\r\nconnection: close\r\n\r\nupgrades not here\r\n");
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  const port = server.address().port;
  return {
    port,
    requests,
    wsUrl: `ws://127.0.0.1:${port}/ws`,
    cutStreams() {
      const cut = [...streams];
      for (const { res, answer } of cut) {
        answer.destroy();
        res.destroy();
      }
      return cut.length;
    },
    close() {
      server.closeAllConnections();
      return new Promise((resolve) => server.close(resolve));
    },
  };
}
