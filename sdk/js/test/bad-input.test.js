// Bad input: malformed URLs and options, getToken failing or returning
// garbage, tokens the gateway refuses, frames the SDK does not know.
// Every failure is a clear error with a code, and retries are bounded.

import { test, before, after, beforeEach } from "node:test";
import assert from "node:assert/strict";
import { Switchboard, SwitchboardError } from "../src/switchboard.js";
import { startGateway, signToken, Recorder, TestClock, FakeSocket, until } from "./gateway.js";

let gw;
before(async () => {
  gw = await startGateway();
});
after(() => gw?.stop());
beforeEach(() => FakeSocket.reset());

const getToken = async () => "token";

test("a malformed URL throws bad_url synchronously", () => {
  for (const url of ["not a url", "ftp://example.com/ws", "ws://example.com/ws#fragment", "", 42, undefined]) {
    assert.throws(
      () => new Switchboard(url, { getToken }),
      (err) => err instanceof SwitchboardError && err.code === "bad_url" && err.message.length > 0,
      `URL ${String(url)}`,
    );
  }
  // http(s) URLs are taken as their ws(s) equivalents.
  assert.doesNotThrow(() => new Switchboard("https://example.com/ws", { getToken }));
});

test("bad options throw bad_options synchronously", () => {
  const cases = [
    {},
    { getToken: "a token" },
    { getToken, backoff: { min: 0 } },
    { getToken, backoff: { min: 500, max: 100 } },
    { getToken, requestTimeout: -1 },
    { getToken, pingInterval: "often" },
    { getToken, WebSocket: null, _noGlobal: true },
  ];
  for (const options of cases) {
    const saved = globalThis.WebSocket;
    if (options._noGlobal) globalThis.WebSocket = undefined;
    try {
      assert.throws(
        () => new Switchboard("ws://example.com/ws", options),
        (err) => err instanceof SwitchboardError && err.code === "bad_options",
        JSON.stringify(options),
      );
    } finally {
      globalThis.WebSocket = saved;
    }
  }
});

test("a WebSocket option that is not a class says so, and names what it got", () => {
  const prefix =
    "options.WebSocket must be a WebSocket class to construct sockets with (globalThis.WebSocket, or the ws package's WebSocket), not ";
  const cases = [
    ["ws", "string \"ws\""],
    [42, "number 42"],
    [{}, "an object"],
    [[WebSocket], "an array"],
    [() => WebSocket, "a function that cannot be called with new (an arrow function or a method)"],
    [new FakeSocket("ws://example.com/ws"), "an instance of FakeSocket (pass the class, not a socket)"],
  ];
  for (const [value, what] of cases) {
    assert.throws(
      () => new Switchboard("ws://example.com/ws", { getToken, WebSocket: value }),
      (err) => err instanceof SwitchboardError && err.code === "bad_options" && err.message === prefix + what,
      String(what),
    );
  }
  // Without the option and without a global, the message says that instead.
  const saved = globalThis.WebSocket;
  globalThis.WebSocket = undefined;
  try {
    assert.throws(
      () => new Switchboard("ws://example.com/ws", { getToken }),
      (err) =>
        err.code === "bad_options" &&
        err.message ===
          "no WebSocket implementation: this runtime has no globalThis.WebSocket; pass options.WebSocket, or run Node 20 with --experimental-websocket, or use transports: [\"sse\"]",
    );
  } finally {
    globalThis.WebSocket = saved;
  }
  // A class is taken.
  assert.doesNotThrow(() => new Switchboard("ws://example.com/ws", { getToken, WebSocket: FakeSocket }).disconnect());
});

/** A client whose WebSocket constructions are counted. */
function countingClient(tokenFn, options = {}) {
  let sockets = 0;
  const Counting = class extends WebSocket {
    constructor(url) {
      super(url);
      sockets += 1;
    }
  };
  const calls = { getToken: 0 };
  const sb = new Switchboard(gw.wsUrl, {
    getToken: () => {
      calls.getToken += 1;
      return tokenFn(calls.getToken);
    },
    backoff: { min: 1, max: 5 },
    maxAuthFailures: 3,
    pingInterval: 0,
    WebSocket: Counting,
    ...options,
  });
  return { sb, calls, sockets: () => sockets, rec: new Recorder(sb) };
}

for (const [what, tokenFn, message] of [
  ["rejects", () => Promise.reject(new Error("auth backend down")), /getToken failed: auth backend down/],
  ["throws", () => { throw new Error("no session"); }, /getToken failed: no session/],
  ["returns a number", () => 42, /non-empty string, got number 42/],
  ["returns an empty string", () => "", /non-empty string, got an empty string/],
  ["returns an object", () => ({ token: "x" }), /non-empty string, got an object/],
  ["returns undefined", () => undefined, /non-empty string, got undefined/],
]) {
  test(`getToken that ${what}: bad_token errors, stops after maxAuthFailures, no socket opened`, async (t) => {
    const c = countingClient(tokenFn);
    t.after(() => c.sb.disconnect());
    c.sb.connect();
    const stopped = await c.rec.waitState("stopped");
    assert.equal(stopped.error.code, "bad_token");
    assert.match(stopped.error.message, message);
    assert.equal(c.calls.getToken, 3, "exactly maxAuthFailures calls");
    assert.equal(c.rec.count("error"), 3);
    for (const e of c.rec.events.filter((e) => e.name === "error")) assert.equal(e.payload.code, "bad_token");
    assert.equal(c.sockets(), 0);
    // Stopped means stopped: nothing is scheduled any more.
    assert.equal(c.sb.state, "stopped");
    assert.equal(c.sb._timers.reconnect, null);
  });
}

test("getToken that never settles times out as bad_token", async (t) => {
  const c = countingClient(() => new Promise(() => {}), { requestTimeout: 30, maxAuthFailures: 1 });
  t.after(() => c.sb.disconnect());
  c.sb.connect();
  const stopped = await c.rec.waitState("stopped");
  assert.equal(stopped.error.code, "bad_token");
  assert.match(stopped.error.message, /did not settle within 30 ms/);
  assert.equal(c.calls.getToken, 1);
});

test("a getToken rejection that is a SwitchboardError keeps its code", async (t) => {
  const c = countingClient(() => Promise.reject(new SwitchboardError("unauthorized", "user logged out")), { maxAuthFailures: 1 });
  t.after(() => c.sb.disconnect());
  c.sb.connect();
  const stopped = await c.rec.waitState("stopped");
  assert.equal(stopped.error.code, "unauthorized");
  assert.equal(stopped.error.message, "user logged out");
});

test("tokens the gateway refuses: the probe says why, a new token each time, stop after maxAuthFailures", async (t) => {
  const c = countingClient(() => signToken({ sub: "forger" }, "a-different-secret-0123456789abcdef"));
  t.after(() => c.sb.disconnect());
  const sub = c.sb.subscribe("chat:never");
  const stopped = await c.rec.waitState("stopped");
  assert.equal(stopped.error.code, "unauthorized");
  assert.equal(stopped.error.message, "token signature does not verify");
  assert.equal(stopped.error.status, 401);
  assert.equal(c.calls.getToken, 3);
  assert.equal(c.sockets(), 3);
  assert.equal(c.rec.count("error"), 3);
  // The subscription's `ready` does not hang: it rejects with the reason.
  await assert.rejects(sub.ready, (err) => err.code === "unauthorized");
});

test("an expired token is replaced and the client connects", async (t) => {
  const c = countingClient((call) =>
    signToken({ sub: "late", exp: Math.floor(Date.now() / 1000) + (call === 1 ? -60 : 3600) }),
  );
  t.after(() => c.sb.disconnect());
  await c.sb.subscribe("chat:late").ready;
  assert.equal(c.calls.getToken, 2);
  const error = await c.rec.wait((e) => e.name === "error");
  assert.equal(error.code, "unauthorized");
  assert.equal(error.message, "token has expired");
  assert.equal(c.sb.state, "connected");
});

test("unknown and malformed server frames are ignored and counted, not thrown", async () => {
  const clock = new TestClock({ holdUpTo: 1e8, random: () => 0.5 });
  const sb = new Switchboard("ws://gateway.test/ws", {
    getToken,
    requestTimeout: 1e9,
    pingInterval: 0,
    WebSocket: FakeSocket,
    clock,
  });
  const rec = new Recorder(sb);
  sb.subscribe("chat:x");
  await until(() => FakeSocket.instances.length === 1);
  const socket = FakeSocket.last();
  socket.accept();
  await rec.waitState("connected");
  socket.reply({ offset: 1, epoch: "e" });

  const junk = [
    { type: "hologram", channel: "x" }, // a frame type from a future server
    "not json",
    "[1,2,3]",
    "null",
    { no: "type" },
    { type: "message", data: {} }, // no channel
    { type: "reset", channel: "chat:x" }, // a reset without a position is unusable
    { type: "welcome", connection_id: "again" }, // a second welcome
  ];
  for (const frame of junk) socket.receive(frame);
  socket.onmessage({ data: new ArrayBuffer(4) }); // binary
  assert.equal(sb.stats.unknownFrames, 9);
  assert.equal(rec.count("error"), 0);
  assert.equal(sb.state, "connected");

  // A reply to a command that already timed out is counted apart.
  socket.receive({ type: "reply", id: 999, result: {} });
  assert.equal(sb.stats.staleReplies, 1);

  // The connection still works.
  const ping = sb.ping();
  socket.reply({});
  assert.equal(typeof (await ping), "number");
  sb.disconnect();
});

test("an application callback that throws becomes an error event; delivery goes on", async () => {
  const sb = new Switchboard("ws://gateway.test/ws", {
    getToken,
    requestTimeout: 1e9,
    pingInterval: 0,
    WebSocket: FakeSocket,
    clock: new TestClock({ holdUpTo: 1e8, random: () => 0.5 }),
  });
  const rec = new Recorder(sb);
  const seen = [];
  sb.subscribe("chat:throws", {
    onMessage: (data) => {
      seen.push(data.n);
      if (data.n === 1) throw new Error("app bug");
    },
  });
  await until(() => FakeSocket.instances.length === 1);
  const socket = FakeSocket.last();
  socket.accept();
  await until(() => socket.sent.length === 1);
  socket.reply({});
  for (const n of [1, 2]) socket.receive({ type: "message", channel: "chat:throws", data: { n } });
  assert.deepEqual(seen, [1, 2]);
  const error = await rec.wait((e) => e.name === "error");
  assert.equal(error.code, "handler_error");
  assert.match(error.message, /app bug/);
  sb.disconnect();
});

test("pending commands are bounded: overloaded beyond maxPending", async () => {
  const sb = new Switchboard("ws://gateway.test/ws", {
    getToken,
    requestTimeout: 1e9,
    pingInterval: 0,
    maxPending: 2,
    WebSocket: FakeSocket,
    clock: new TestClock({ holdUpTo: 1e8, random: () => 0.5 }),
  });
  const rec = new Recorder(sb);
  sb.connect();
  await until(() => FakeSocket.instances.length === 1);
  FakeSocket.last().accept();
  await rec.waitState("connected");
  const first = sb.ping();
  const second = sb.ping();
  await assert.rejects(sb.ping(), (err) => err.code === "overloaded");
  sb.disconnect();
  // disconnect() rejects what was pending with code "disconnected".
  await assert.rejects(first, (err) => err.code === "disconnected");
  await assert.rejects(second, (err) => err.code === "disconnected");
});

test("in a page, the probe names the page's origin; a refused one stops the client with forbidden_origin", async (t) => {
  // Node's WebSocket sends no Origin, so play a browser: the handshake fails
  // (as a browser's would from a disallowed page) and location is set.
  const saved = Object.getOwnPropertyDescriptor(globalThis, "location");
  Object.defineProperty(globalThis, "location", { value: { origin: "https://evil.example" }, configurable: true });
  t.after(() => {
    if (saved) Object.defineProperty(globalThis, "location", saved);
    else delete globalThis.location;
  });
  const probes = [];
  const sb = new Switchboard(gw.wsUrl, {
    getToken: async () => signToken({ sub: "page" }),
    pingInterval: 0,
    WebSocket: FakeSocket,
    fetch: (url, init) => {
      probes.push(url);
      return fetch(url, init); // the real gateway answers
    },
  });
  const rec = new Recorder(sb);
  sb.connect();
  await until(() => FakeSocket.instances.length === 1);
  FakeSocket.last().fail();
  const stopped = await rec.waitState("stopped");
  assert.equal(stopped.error.code, "forbidden_origin");
  assert.equal(stopped.error.message, "origin is not allowed");
  assert.equal(new URL(probes[0]).searchParams.get("origin"), "https://evil.example");
  assert.equal(FakeSocket.instances.length, 1, "no retry");
});
