// The SSE transport against a real gateway: forced (`transports: ["sse"]`)
// and as the fallback when a proxy refuses the WebSocket upgrade. The
// stream, the commands over HTTP, resume with Last-Event-ID after a cut,
// the close events and the token refresh, all through the public API.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { Switchboard } from "../src/switchboard.js";
import { startGateway, startProxy, signToken, Recorder, Inbox, TestClock, withTimeout } from "./gateway.js";

let gw;
before(async () => {
  gw = await startGateway();
});
after(() => gw?.stop());

/** A fetch that records the requests the SDK makes (method, URL, headers). */
function recordingFetch(log) {
  return (url, init = {}) => {
    log.push({ method: init.method ?? "GET", url: new URL(url), headers: { ...init.headers }, body: init.body });
    return fetch(url, init);
  };
}

function client(url, claims = {}, options = {}) {
  const requests = [];
  const sb = new Switchboard(url, {
    getToken: async () => signToken(claims),
    pingInterval: 0,
    fetch: recordingFetch(requests),
    ...options,
  });
  return { sb, requests, rec: new Recorder(sb) };
}

test("forced SSE: welcome, receive, publish, presence, history, ping and unsubscribe", async (t) => {
  const alice = client(gw.wsUrl, { sub: "alice", info: { name: "Alice" } }, { transports: ["sse"] });
  t.after(() => alice.sb.disconnect());
  const messages = new Inbox();
  const recoveries = new Inbox();
  const sub = alice.sb.subscribe("chat:sse-basic", {
    onMessage: (data, context) => messages.push({ data, context }),
    onRecover: recoveries.push,
  });
  const ready = await sub.ready;
  assert.equal(typeof ready.offset, "number");
  assert.equal(typeof ready.epoch, "string");
  const welcome = await alice.rec.wait((e) => e.name === "welcome");
  assert.equal(welcome.transport, "sse");
  assert.equal(welcome.user, "alice");
  assert.equal(alice.sb.transport, "sse");
  assert.deepEqual(await recoveries.next(), { recovered: true, offset: ready.offset, epoch: ready.epoch });
  const stream = alice.requests.find((r) => r.url.pathname === "/sse");
  assert.equal(stream.url.search, "?channel=chat%3Asse-basic");
  assert.match(stream.headers.authorization, /^Bearer ey/);
  assert.equal(stream.url.searchParams.get("token"), null, "the token travels in a header, not the URL");

  // A WebSocket client on the same channel: both transports meet.
  const bob = client(gw.wsUrl, { sub: "bob" }, { transports: ["websocket"] });
  t.after(() => bob.sb.disconnect());
  const bobMessages = new Inbox();
  const bobSub = bob.sb.subscribe("chat:sse-basic", { onMessage: bobMessages.push });
  await bobSub.ready;

  // Receive: a server API publish.
  const fromApi = await gw.publish("chat:sse-basic", { text: "from the backend" });
  assert.deepEqual(await messages.next(), {
    data: { text: "from the backend" },
    context: { channel: "chat:sse-basic", offset: fromApi.offset },
  });
  await bobMessages.next();

  // Publish over POST /sse/command: both get it.
  const published = await sub.publish({ text: "hi from sse" });
  assert.equal(published.offset, fromApi.offset + 1);
  assert.deepEqual(await messages.next(), {
    data: { text: "hi from sse" },
    context: { channel: "chat:sse-basic", offset: published.offset },
  });
  assert.deepEqual((await bobMessages.next())[0], { text: "hi from sse" });
  const command = alice.requests.find((r) => r.url.pathname === "/sse/command");
  assert.equal(command.method, "POST");
  assert.equal(command.url.searchParams.get("connection"), welcome.connection_id);
  assert.match(command.headers.authorization, /^Bearer ey/);

  // Presence lists the stream as a connection like any other.
  const members = (await sub.presence()).sort((a, b) => a.user.localeCompare(b.user));
  assert.deepEqual(
    members.map((m) => [m.user, m.info]),
    [
      ["alice", { name: "Alice" }],
      ["bob", null],
    ],
  );
  assert.equal(members[0].connection_id, welcome.connection_id);

  const history = await sub.history({ limit: 10 });
  assert.deepEqual(
    history.messages.map((m) => [m.offset, m.data]),
    [
      [fromApi.offset, { text: "from the backend" }],
      [published.offset, { text: "hi from sse" }],
    ],
  );
  assert.equal(typeof (await alice.sb.ping()), "number");

  // Unsubscribe over HTTP: the stream stops carrying the channel.
  await sub.unsubscribe();
  assert.deepEqual(await bob.sb.presence("chat:sse-basic").then((m) => m.map((x) => x.user)), ["bob"]);
  await gw.publish("chat:sse-basic", { text: "after unsubscribe" });
  await bobMessages.next();
  assert.equal(alice.rec.count("error"), 0);
  assert.equal(alice.sb.stats.unknownFrames, 0);
  assert.equal(alice.sb.stats.connects, 1);
});

test("a WebSocket upgrade refused by a proxy falls back to SSE: receive, publish, resume after a cut with nothing lost", async (t) => {
  const proxy = await startProxy(gw);
  t.after(() => proxy.close());
  // Backoff timers (<= 1 s) are held until the test fires them, so the
  // messages "missed" are published while the client is surely away.
  const clock = new TestClock({ holdUpTo: 1000, realTimers: true, random: () => 0.5 });
  const c = client(proxy.wsUrl, { sub: "walled" }, { clock, backoff: { min: 50, max: 1000 } });
  t.after(() => c.sb.disconnect());
  const messages = new Inbox();
  const recoveries = new Inbox();
  const channel = "chat:sse-fallback";
  const sub = c.sb.subscribe(channel, {
    onMessage: (data, context) => messages.push({ data, offset: context.offset }),
    onRecover: recoveries.push,
  });
  assert.equal(c.sb.transport, "websocket");

  // The upgrade is refused, the probe answers 204: straight to SSE (a 0 ms
  // timer, fired here).
  assert.equal(await clock.nextHeld(), 0);
  clock.fireHeld();
  const start = await sub.ready;
  const welcome = await c.rec.wait((e) => e.name === "welcome");
  assert.equal(welcome.transport, "sse");
  assert.deepEqual(
    proxy.requests.slice(0, 3).map((r) => [r.method, r.path.split("?")[0], r.status, r.upgrade]),
    [
      ["GET", "/ws", 403, true],
      ["GET", "/ws", 204, false],
      ["GET", "/sse", 200, false],
    ],
  );
  assert.deepEqual(c.rec.states(), ["connecting", "disconnected", "connecting", "connected"]);
  assert.deepEqual(await recoveries.next(), { recovered: true, offset: start.offset, epoch: start.epoch });

  // Receive and publish.
  await gw.publish(channel, { n: 1 });
  const own = await sub.publish({ n: 2 });
  assert.equal(own.offset, start.offset + 2);
  assert.deepEqual(await messages.take(2), [
    { data: { n: 1 }, offset: start.offset + 1 },
    { data: { n: 2 }, offset: start.offset + 2 },
  ]);

  // The proxy cuts the stream (no close event): backoff, and meanwhile
  // three messages are published.
  const mark = c.rec.mark;
  assert.equal(proxy.cutStreams(), 1);
  const lost = await c.rec.waitState("disconnected", { from: mark });
  assert.equal(lost.code, 1006);
  assert.equal(await clock.nextHeld(), 0.5 * 50, "a backoff, not a fallback: the stream was cut, not blocked");
  for (const n of [3, 4, 5]) await gw.publish(channel, { n });
  const streamsBefore = c.requests.filter((r) => r.url.pathname === "/sse").length;
  clock.fireHeld();
  await c.rec.waitState("connected", { from: mark });
  const resumed = c.requests.filter((r) => r.url.pathname === "/sse");
  assert.equal(resumed.length, streamsBefore + 1, "SSE again: the transport that worked is kept");
  assert.equal(
    proxy.requests.filter((r) => r.upgrade).length,
    1,
    "no second WebSocket attempt after the fallback",
  );
  assert.equal(resumed.at(-1).headers["last-event-id"], `${start.offset + 2}:${start.epoch}`);
  assert.deepEqual(await recoveries.next(), { recovered: true, offset: start.offset + 5, epoch: start.epoch });
  await gw.publish(channel, { n: 6 });
  assert.deepEqual(
    (await messages.take(4)).map((m) => [m.data.n, m.offset]),
    [3, 4, 5, 6].map((n) => [n, start.offset + n]),
  );

  // Nothing else arrives: a marker on a fresh channel (which reopens the
  // stream, resuming this one) comes after any stray duplicate would have.
  const marker = new Inbox();
  await c.sb.subscribe("chat:sse-marker", { onMessage: marker.push }).ready;
  await gw.publish("chat:sse-marker", {});
  await marker.next();
  assert.equal(messages.items.length, 0, "no duplicates, nothing lost");
  assert.equal(c.rec.count("error"), 0);
});

test("subscribing to another channel on SSE reopens the stream with both, each resuming from its position", async (t) => {
  const c = client(gw.wsUrl, { sub: "reopener" }, { transports: ["sse"] });
  t.after(() => c.sb.disconnect());
  const first = new Inbox();
  const second = new Inbox();
  const a = c.sb.subscribe("chat:sse-a", { onMessage: (data, ctx) => first.push({ data, offset: ctx.offset }) });
  const startA = await a.ready;
  await gw.publish("chat:sse-a", { n: 1 });
  await first.next();

  const b = c.sb.subscribe("chat:sse-b", { onMessage: (data, ctx) => second.push({ data, offset: ctx.offset }) });
  await b.ready;
  const streams = c.requests.filter((r) => r.url.pathname === "/sse");
  assert.equal(streams.length, 2);
  assert.deepEqual(streams[1].url.searchParams.getAll("channel"), ["chat:sse-a", "chat:sse-b"]);
  assert.equal(streams[1].headers["last-event-id"], `${startA.offset + 1}:${startA.epoch},`);
  assert.equal(a.state, "subscribed");

  await gw.publish("chat:sse-a", { n: 2 });
  await gw.publish("chat:sse-b", { n: 1 });
  assert.deepEqual(await first.next(), { data: { n: 2 }, offset: startA.offset + 2 });
  assert.deepEqual((await second.next()).data, { n: 1 });
  assert.equal(first.items.length, 0, "the reopen delivered nothing twice");
  assert.deepEqual(c.rec.states(), ["connecting", "connected", "connecting", "connected"]);
  assert.equal(c.rec.count("error"), 0);
});

test("a refused channel gets its error in the subscription event; the stream goes on with the others", async (t) => {
  const c = client(gw.wsUrl, { sub: "limited", channels: ["chat:*"] }, { transports: ["sse"] });
  t.after(() => c.sb.disconnect());
  const messages = new Inbox();
  const denied = c.sb.subscribe("admin:audit");
  const allowed = c.sb.subscribe("chat:sse-allowed", { onMessage: messages.push });
  await assert.rejects(denied.ready, (err) => err.code === "forbidden");
  assert.equal(denied.state, "failed");
  await allowed.ready;
  assert.deepEqual(
    c.requests.filter((r) => r.url.pathname === "/sse").map((r) => r.url.searchParams.getAll("channel")),
    [["admin:audit", "chat:sse-allowed"]],
    "one stream named both",
  );
  await gw.publish("chat:sse-allowed", { ok: true });
  assert.deepEqual((await messages.next())[0], { ok: true });
  assert.equal(c.sb.state, "connected");
});

test("the server API's disconnect ends the stream with a close event 4003: the client stops", async (t) => {
  const c = client(gw.wsUrl, { sub: "kicked" }, { transports: ["sse"] });
  t.after(() => c.sb.disconnect());
  await c.sb.subscribe("chat:sse-kick").ready;
  const { status } = await gw.api("POST", "/api/disconnect", { user: "kicked" });
  assert.equal(status, 200);
  const stopped = await c.rec.waitState("stopped");
  assert.equal(stopped.code, 4003);
  assert.equal(stopped.error.code, "disconnected_by_server");
});

test("over SSE the token is refreshed by the refresh command before it expires: no 4001", async (t) => {
  const short = await startGateway({ env: { SWITCHBOARD_JWT_LEEWAY: "0s" } });
  t.after(() => short.stop());
  const firstExp = Math.floor(Date.now() / 1000) + 3;
  let calls = 0;
  const requests = [];
  const sb = new Switchboard(short.wsUrl, {
    getToken: async () => {
      calls += 1;
      return signToken({ sub: "refresher", exp: calls === 1 ? firstExp : Math.floor(Date.now() / 1000) + 3600 });
    },
    transports: ["sse"],
    pingInterval: 0,
    fetch: recordingFetch(requests),
  });
  t.after(() => sb.disconnect());
  const rec = new Recorder(sb);
  const messages = new Inbox();
  await sb.subscribe("chat:sse-refresh", { onMessage: messages.push }).ready;
  const deadline = firstExp * 1000 + 1_000;
  await withTimeout(new Promise((resolve) => setTimeout(resolve, Math.max(0, deadline - Date.now()))), 6_000, "the expiry");
  assert.equal(sb.state, "connected");
  await short.publish("chat:sse-refresh", { after: "expiry" });
  assert.deepEqual((await messages.next())[0], { after: "expiry" });
  assert.deepEqual(rec.states(), ["connecting", "connected"], "no disconnect, no 4001");
  assert.equal(calls, 2);
  assert.equal(rec.count("error"), 0);
  const refresh = requests.find((r) => r.url.pathname === "/sse/command" && JSON.parse(r.body).type === "refresh");
  assert.ok(refresh, "the refresh went over POST /sse/command");
  assert.equal(refresh.headers.authorization, `Bearer ${JSON.parse(refresh.body).token}`, "authenticated by the new token");
});

test("a draining node (SIGTERM) ends the stream with a close event 1012: the client reconnects soon, still on SSE", async (t) => {
  const draining = await startGateway();
  t.after(() => draining.stop());
  const clock = new TestClock({ holdUpTo: 1000, realTimers: true, random: () => 0.5 });
  const c = client(draining.wsUrl, { sub: "drained" }, { transports: ["sse"], clock, backoff: { min: 100, max: 1000 } });
  t.after(() => c.sb.disconnect());
  await c.sb.subscribe("chat:sse-drain").ready;
  const mark = c.rec.mark;
  await draining.kill("SIGTERM");
  const closed = await c.rec.waitState("disconnected", { from: mark });
  assert.equal(closed.code, 1012);
  assert.equal(await clock.nextHeld(), 0.5 * 100, "a jittered delay within backoff.min, as for a WebSocket 1012");
  assert.equal(c.sb.transport, "sse");
});

test("a stream refused with 400 for a malformed channel or too many: those subscriptions fail, the others go on", async (t) => {
  const limited = await startGateway({ env: { SWITCHBOARD_MAX_CHANNELS: "2" } });
  t.after(() => limited.stop());
  const c = client(limited.wsUrl, { sub: "many" }, { transports: ["sse"] });
  t.after(() => c.sb.disconnect());
  const malformed = c.sb.subscribe("bad name");
  const first = c.sb.subscribe("chat:sse-1");
  const second = c.sb.subscribe("chat:sse-2");
  const third = c.sb.subscribe("chat:sse-3");
  await assert.rejects(
    malformed.ready,
    (err) => err.code === "bad_request" && err.status === 400 && err.message.startsWith('channel "bad name": '),
  );
  await assert.rejects(
    third.ready,
    (err) => err.code === "bad_request" && err.message.startsWith("a stream names at most 2 channels"),
  );
  await first.ready;
  await second.ready;
  assert.deepEqual(
    c.requests.filter((r) => r.url.pathname === "/sse").map((r) => r.url.searchParams.getAll("channel")),
    [
      ["bad name", "chat:sse-1", "chat:sse-2", "chat:sse-3"],
      ["chat:sse-1", "chat:sse-2", "chat:sse-3"],
      ["chat:sse-1", "chat:sse-2"],
    ],
  );
  assert.equal(c.sb.state, "connected");
});
