// Backoff timing, from the SDK's clock hooks: no test here sleeps. The
// TestClock holds every timer of at most `holdUpTo` ms (the backoff timers)
// and the test fires them; random() returns the values the test queued.

import { test, after, beforeEach } from "node:test";
import assert from "node:assert/strict";
import { Switchboard } from "../src/switchboard.js";
import { startGateway, signToken, Recorder, TestClock, FakeSocket, until } from "./gateway.js";

const MIN = 100;
const MAX = 1000;
const cap = (attempt) => Math.min(MAX, MIN * 2 ** attempt);

let gw;
after(() => gw?.stop());
beforeEach(() => FakeSocket.reset());

test("delays follow full jitter, grow exponentially to the max, and reset after a lasting connection", async (t) => {
  gw = await startGateway();
  await gw.kill(); // the port is known and closed: every attempt fails
  const randoms = [0.5, 0.3, 0.75, 0.9, 0.6, 0.35, 0.999];
  const clock = new TestClock({ holdUpTo: MAX, randoms: [...randoms] });
  const sb = new Switchboard(gw.wsUrl, {
    getToken: async () => signToken({ sub: "patient" }),
    backoff: { min: MIN, max: MAX },
    requestTimeout: 60_000, // longer than holdUpTo: never mistaken for a backoff
    pingInterval: 0,
    clock,
  });
  t.after(() => sb.disconnect());
  const rec = new Recorder(sb);
  sb.connect();

  const delays = [];
  for (let attempt = 0; attempt < randoms.length; attempt++) {
    delays.push(await clock.nextHeld());
    assert.equal(clock.held.size, 1, "exactly one backoff timer at a time");
    if (attempt < randoms.length - 1) clock.fireHeld();
  }
  const expected = randoms.map((r, attempt) => r * cap(attempt));
  assert.deepEqual(delays, expected);
  for (const [attempt, delay] of delays.entries()) {
    assert.ok(delay >= 0 && delay <= cap(attempt) && delay <= MAX, `delay ${delay} within [0, ${cap(attempt)}]`);
  }
  // Spread: the same attempt with other random values gives other delays;
  // the caps double until the max.
  assert.deepEqual([0, 1, 2, 3, 4, 5].map(cap), [100, 200, 400, 800, 1000, 1000]);
  assert.equal(new Set(delays).size, delays.length);
  assert.equal(rec.count("error"), 0, "a refused TCP connection is transient: no error event");

  // The node comes back: the next attempt connects.
  await gw.start(gw.port);
  clock.fireHeld();
  await rec.waitState("connected");

  // It stayed up longer than backoff.max: the next loss starts over at min.
  clock.advance(MAX + 1);
  clock.randoms.push(0.8);
  const mark = rec.mark;
  await gw.kill();
  await rec.waitState("disconnected", { from: mark });
  assert.equal(await clock.nextHeld(), 0.8 * cap(0));

  // A connection that drops again at once does not reset it: no crash loop
  // of instant reconnects.
  await gw.start(gw.port);
  clock.fireHeld();
  await rec.waitState("connected", { from: mark });
  clock.randoms.push(0.8);
  const mark2 = rec.mark;
  await gw.kill();
  await rec.waitState("disconnected", { from: mark2 });
  assert.equal(await clock.nextHeld(), 0.8 * cap(1));
});

// ---- close codes and handshake refusals, with a fake socket and fetch ----

function fakeClient({ getToken, fetch, randoms = [], maxAuthFailures, transports } = {}) {
  const tokens = [];
  const clock = new TestClock({ holdUpTo: 1e8, randoms });
  const sb = new Switchboard("ws://gateway.test/ws", {
    getToken:
      getToken ??
      (async () => {
        tokens.push(`token-${tokens.length + 1}`);
        return tokens.at(-1);
      }),
    backoff: { min: MIN, max: MAX },
    requestTimeout: 1e9, // beyond holdUpTo: such timers never fire here
    pingInterval: 0,
    maxAuthFailures,
    WebSocket: FakeSocket,
    fetch: fetch ?? (async () => new Response(null, { status: 204 })),
    clock,
    ...(transports ? { transports } : {}),
  });
  return { sb, clock, tokens, rec: new Recorder(sb) };
}

async function connected({ sb, rec }) {
  sb.connect();
  await rec.waitState("connecting");
  await until(() => FakeSocket.instances.length > 0);
  FakeSocket.last().accept();
  await rec.waitState("connected");
  return FakeSocket.last();
}


test("1012 (draining) reconnects soon: a jittered delay within backoff.min", async () => {
  const client = fakeClient({ randoms: [0.7] });
  const socket = await connected(client);
  socket.serverClose(1012, "node shutting down");
  assert.equal(await client.clock.nextHeld(), 0.7 * MIN);
  const disconnected = await client.rec.waitState("disconnected");
  assert.deepEqual(disconnected, { state: "disconnected", code: 1012, reason: "node shutting down" });
  client.clock.fireHeld();
  await until(() => FakeSocket.instances.length === 2);
  assert.match(FakeSocket.last().url, /token=token-1/, "the token is reused");
  client.sb.disconnect();
});

test("1013 (slow consumer) backs off instead of resetting", async () => {
  const client = fakeClient({ randoms: [0.5, 0.5, 0.5] });
  let socket = await connected(client);
  client.clock.advance(MAX * 10); // a long session: only 1013 keeps the backoff up
  socket.serverClose(1013, "slow consumer: send queue overflowed");
  assert.equal(await client.clock.nextHeld(), 0.5 * cap(1));
  client.clock.fireHeld();
  await until(() => FakeSocket.instances.length === 2);
  socket = FakeSocket.last();
  socket.accept();
  socket.serverClose(1013, "slow consumer: send queue overflowed");
  assert.equal(await client.clock.nextHeld(), 0.5 * cap(2));
  client.sb.disconnect();
});

test("4001 gets a new token before reconnecting", async () => {
  const client = fakeClient({ randoms: [0.5] });
  const socket = await connected(client);
  socket.serverClose(4001, "token expired");
  await client.clock.nextHeld();
  client.clock.fireHeld();
  await until(() => FakeSocket.instances.length === 2);
  assert.deepEqual(client.tokens, ["token-1", "token-2"]);
  assert.match(FakeSocket.last().url, /token=token-2/);
  client.sb.disconnect();
});

for (const [code, reason, errorCode] of [
  [4003, "disconnected by the server", "disconnected_by_server"],
  [1008, "message rate limit of 50/s exceeded persistently", "policy_violation"],
]) {
  test(`${code} stops and reports, without reconnecting`, async () => {
    const client = fakeClient();
    const socket = await connected(client);
    socket.serverClose(code, reason);
    const stopped = await client.rec.waitState("stopped");
    assert.equal(stopped.code, code);
    assert.equal(stopped.error.code, errorCode);
    assert.equal(stopped.error.message, reason);
    assert.equal((await client.rec.wait((e) => e.name === "error")).code, errorCode);
    assert.equal(client.clock.held.size, 0, "no reconnect scheduled");
    assert.equal(FakeSocket.instances.length, 1);
    assert.equal(client.sb.state, "stopped");
  });
}

function probeAnswer(status, body, headers = {}) {
  const calls = [];
  const fetch = async (url) => {
    calls.push(url);
    return new Response(JSON.stringify(body), { status, headers: { "content-type": "application/json", ...headers } });
  };
  return { fetch, calls };
}

test("a refused handshake is probed: 429 waits Retry-After plus jitter", async () => {
  const probe = probeAnswer(429, { error: "rate_limited", message: "too many new connections from this address; retry later" }, { "retry-after": "3" });
  const client = fakeClient({ fetch: probe.fetch, randoms: [0.5] });
  client.sb.connect();
  await until(() => FakeSocket.instances.length === 1);
  FakeSocket.last().fail();
  assert.equal(await client.clock.nextHeld(), 3000 + 0.5 * cap(0));
  assert.equal(probe.calls.length, 1);
  const url = new URL(probe.calls[0]);
  assert.equal(url.origin + url.pathname, "http://gateway.test/ws");
  assert.equal(url.searchParams.get("probe"), "1");
  assert.equal(url.searchParams.get("token"), "token-1");
  const error = await client.rec.wait((e) => e.name === "error");
  assert.equal(error.code, "rate_limited");
  assert.equal(error.retryAfter, 3);
  client.sb.disconnect();
});

test("a refused handshake is probed: 403 forbidden_origin stops with the server's message", async () => {
  const probe = probeAnswer(403, { error: "forbidden_origin", message: "origin is not allowed" });
  const client = fakeClient({ fetch: probe.fetch });
  client.sb.connect();
  await until(() => FakeSocket.instances.length === 1);
  FakeSocket.last().fail();
  const stopped = await client.rec.waitState("stopped");
  assert.equal(stopped.error.code, "forbidden_origin");
  assert.equal(stopped.error.message, "origin is not allowed");
  assert.equal(stopped.error.status, 403);
  assert.equal(client.clock.held.size, 0);
});

test("a refused handshake is probed: 401 fetches a new token, and gives up after maxAuthFailures", async () => {
  const probe = probeAnswer(401, { error: "unauthorized", message: "token signature does not verify" });
  const client = fakeClient({ fetch: probe.fetch, randoms: [0.5, 0.5, 0.5], maxAuthFailures: 3 });
  client.sb.connect();
  for (let attempt = 1; attempt <= 3; attempt++) {
    await until(() => FakeSocket.instances.length === attempt);
    FakeSocket.last().fail();
    if (attempt < 3) {
      assert.equal(await client.clock.nextHeld(), 0.5 * cap(attempt - 1));
      client.clock.fireHeld();
    }
  }
  const stopped = await client.rec.waitState("stopped");
  assert.equal(stopped.error.code, "unauthorized");
  assert.equal(stopped.error.message, "token signature does not verify");
  assert.deepEqual(client.tokens, ["token-1", "token-2", "token-3"], "one new token per refusal");
  assert.equal(client.rec.count("error"), 3);
  assert.equal(client.clock.held.size, 0);
});

test("with websocket alone, a probe that fails, or answers 204, means plain backoff", async () => {
  let answers = 0;
  const fetch = async () => {
    answers += 1;
    if (answers === 1) throw new TypeError("fetch failed");
    return new Response(null, { status: 204 });
  };
  // No transport to fall back to (the default falls back to SSE on a 204:
  // see sse-fallback.test.js).
  const client = fakeClient({ fetch, randoms: [0.5, 0.5], transports: ["websocket"] });
  client.sb.connect();
  await until(() => FakeSocket.instances.length === 1);
  FakeSocket.last().fail();
  assert.equal(await client.clock.nextHeld(), 0.5 * cap(0));
  client.clock.fireHeld();
  await until(() => FakeSocket.instances.length === 2);
  FakeSocket.last().fail();
  assert.equal(await client.clock.nextHeld(), 0.5 * cap(1));
  assert.equal(client.rec.count("error"), 0);
  assert.deepEqual(client.tokens, ["token-1"], "the token is kept");
  client.sb.disconnect();
});

test("a ping without a reply within requestTimeout drops the connection and reconnects", async () => {
  const clock = new TestClock({ holdUpTo: Infinity, randoms: [0.5] });
  const sb = new Switchboard("ws://gateway.test/ws", {
    getToken: async () => "token",
    backoff: { min: MIN, max: MAX },
    pingInterval: 20_000,
    requestTimeout: 7_000,
    WebSocket: FakeSocket,
    clock,
  });
  const rec = new Recorder(sb);
  const socket = await connected({ sb, rec });
  const fire = (ms) => {
    const entry = [...clock.held].find(([, timer]) => timer.ms === ms);
    assert.ok(entry, `a held ${ms} ms timer`);
    clock.held.delete(entry[0]);
    entry[1].fn();
  };

  // A ping answered in time schedules the next one.
  fire(20_000);
  assert.equal(socket.sent.at(-1).type, "ping");
  socket.reply({});
  await until(() => [...clock.held.values()].some((t) => t.ms === 20_000));

  // One that is not answered closes the socket as dead and reconnects.
  fire(20_000);
  fire(7_000);
  const disconnected = await rec.waitState("disconnected");
  assert.deepEqual(disconnected, { state: "disconnected", code: 1006, reason: "ping timeout" });
  assert.equal(socket.closedWith.code, 4000);
  await until(() => [...clock.held.values()].some((t) => t.ms === 0.5 * MIN));
  sb.disconnect();
});

test("a subscribe refused for a transient reason is retried with backoff; ready waits for the success", async () => {
  const clock = new TestClock({ holdUpTo: MAX, randoms: [0.5, 0.5, 0.5] });
  const sb = new Switchboard("ws://gateway.test/ws", {
    getToken: async () => "token",
    backoff: { min: MIN, max: MAX },
    requestTimeout: 1e9,
    pingInterval: 0,
    WebSocket: FakeSocket,
    clock,
  });
  const errors = [];
  const sub = sb.subscribe("chat:busy", { onError: (e) => errors.push(e.code) });
  await until(() => FakeSocket.instances.length === 1);
  const socket = FakeSocket.last();
  socket.accept();
  await until(() => socket.sent.length === 1);
  socket.reply(undefined, { code: "rate_limited", message: "message rate limit of 50/s exceeded; command not executed" });
  assert.equal(await clock.nextHeld(), 0.5 * cap(0));
  clock.fireHeld();
  await until(() => socket.sent.length === 2);
  socket.reply(undefined, { code: "internal", message: "subscription failed: broker unavailable" });
  assert.equal(await clock.nextHeld(), 0.5 * cap(1));
  clock.fireHeld();
  await until(() => socket.sent.length === 3);
  // The subscribe proxy's backend did not answer: transient too.
  socket.reply(undefined, { code: "unavailable", message: "subscribe authorization unavailable: the backend did not answer within 2000 ms" });
  assert.equal(await clock.nextHeld(), 0.5 * cap(2));
  clock.fireHeld();
  await until(() => socket.sent.length === 4);
  socket.reply({ offset: 3, epoch: "e" });
  assert.deepEqual(await sub.ready, { offset: 3, epoch: "e" });
  assert.deepEqual(errors, ["rate_limited", "internal", "unavailable"]);
  assert.equal(sub.state, "subscribed");
  sb.disconnect();
});
