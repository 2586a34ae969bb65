// Recovery: messages published while a subscriber was away arrive after it
// reconnects, in order, once each, with recovered: true; then live ones.

import { test, before, after, beforeEach } from "node:test";
import assert from "node:assert/strict";
import { Switchboard } from "../src/switchboard.js";
import { startGateway, signToken, Recorder, Inbox, TestClock, FakeSocket, until } from "./gateway.js";

let gw;
before(async () => {
  gw = await startGateway();
});
after(() => gw?.stop());
beforeEach(() => FakeSocket.reset());

/** A WebSocket that records the frames the SDK sends. */
function recordingWebSocket(log) {
  return class extends WebSocket {
    send(text) {
      log.push(JSON.parse(text));
      super.send(text);
    }
  };
}

function subscriber(channel, options = {}) {
  const sent = [];
  // Backoff timers (<= 1 s) are held until the test fires them, so the
  // messages "missed" are published while the client is surely away.
  const clock = new TestClock({ holdUpTo: 1000, realTimers: true, random: () => 0.5 });
  const sb = new Switchboard(gw.wsUrl, {
    getToken: async () => signToken({ sub: "resumer" }),
    backoff: { min: 50, max: 1000 },
    pingInterval: 0,
    WebSocket: recordingWebSocket(sent),
    clock,
    ...options,
  });
  const messages = new Inbox();
  const recoveries = new Inbox();
  const sub = sb.subscribe(channel, {
    onMessage: (data, context) => messages.push({ data, offset: context.offset }),
    onRecover: recoveries.push,
  });
  return { sb, sub, sent, clock, messages, recoveries, rec: new Recorder(sb) };
}

test("after a dropped connection the missed messages arrive in order with recovered: true, then live ones", async (t) => {
  const channel = "chat:recovery";
  const c = subscriber(channel);
  t.after(() => c.sb.disconnect());
  const start = await c.sub.ready;
  assert.deepEqual(await c.recoveries.next(), { recovered: true, offset: start.offset, epoch: start.epoch });

  for (const n of [1, 2]) await gw.publish(channel, { n });
  assert.deepEqual(await c.messages.take(2), [
    { data: { n: 1 }, offset: start.offset + 1 },
    { data: { n: 2 }, offset: start.offset + 2 },
  ]);

  const mark = c.rec.mark;
  c.sb._dropConnection();
  await c.rec.waitState("disconnected", { from: mark });
  assert.equal(await c.clock.nextHeld(), 0.5 * 50);
  for (const n of [3, 4, 5]) await gw.publish(channel, { n });

  c.clock.fireHeld();
  await c.rec.waitState("connected", { from: mark });
  const recovery = await c.recoveries.next();
  assert.deepEqual(recovery, { recovered: true, offset: start.offset + 5, epoch: start.epoch });
  const resubscribe = c.sent.filter((f) => f.type === "subscribe").at(-1);
  assert.deepEqual(resubscribe.since, { offset: start.offset + 2, epoch: start.epoch });

  await gw.publish(channel, { n: 6 });
  const received = await c.messages.take(4);
  assert.deepEqual(
    received.map((m) => [m.data.n, m.offset]),
    [3, 4, 5, 6].map((n) => [n, start.offset + n]),
  );
  assert.deepEqual(c.sub.position, { offset: start.offset + 6, epoch: start.epoch });
  assert.equal(c.sb.stats.reconnects, 1);

  // Nothing else arrives: a marker on a fresh channel comes after any stray
  // duplicate would have.
  const marker = new Inbox();
  await c.sb.subscribe("chat:marker", { onMessage: marker.push }).ready;
  await gw.publish("chat:marker", {});
  await marker.next();
  assert.equal(c.messages.items.length, 0, "no duplicates");
  assert.equal(c.rec.count("error"), 0);
});

test("disconnect() and connect() keep the positions and resume with since", async (t) => {
  const channel = "chat:resume-explicit";
  const c = subscriber(channel);
  t.after(() => c.sb.disconnect());
  const start = await c.sub.ready;
  await c.recoveries.next();
  await gw.publish(channel, { n: 1 });
  await c.messages.next();

  c.sb.disconnect();
  assert.equal(c.sb.state, "stopped");
  for (const n of [2, 3]) await gw.publish(channel, { n });
  c.sb.connect();
  assert.deepEqual(await c.recoveries.next(), { recovered: true, offset: start.offset + 3, epoch: start.epoch });
  assert.deepEqual(
    (await c.messages.take(2)).map((m) => m.data.n),
    [2, 3],
  );
});

test("a since the server cannot serve gives recovered: false and the new position", async (t) => {
  const channel = "chat:unrecoverable";
  const c = subscriber(channel);
  t.after(() => c.sb.disconnect());
  await c.sub.ready;
  await c.recoveries.next();
  // The default history keeps 100 messages: publish more while away.
  c.sb.disconnect();
  let last;
  for (let n = 1; n <= 102; n++) last = await gw.publish(channel, { n });
  c.sb.connect();
  assert.deepEqual(await c.recoveries.next(), { recovered: false, offset: last.offset, epoch: last.epoch });
  assert.deepEqual(c.sub.position, { offset: last.offset, epoch: last.epoch });
  await gw.publish(channel, { n: "live" });
  assert.deepEqual((await c.messages.next()).data, { n: "live" }, "no replay, live messages continue");
});

// ---- duplicates and reset frames, with a fake socket ----

test("a message at or below the known position is dropped; a reset replaces the position", async () => {
  const resets = new Inbox();
  const messages = new Inbox();
  const clock = new TestClock({ holdUpTo: 1e8, random: () => 0.5 });
  const sb = new Switchboard("ws://gateway.test/ws", {
    getToken: async () => "token",
    pingInterval: 0,
    requestTimeout: 1e9,
    WebSocket: FakeSocket,
    clock,
  });
  const sub = sb.subscribe("chat:fake", { onMessage: (data, ctx) => messages.push(ctx.offset), onReset: resets.push });
  await until(() => FakeSocket.instances.length === 1);
  let socket = FakeSocket.last();
  socket.accept();
  await until(() => socket.sent.length === 1);
  socket.reply({ offset: 5, epoch: "e1" });
  await sub.ready;

  for (const offset of [6, 6, 5, 7]) socket.receive({ type: "message", channel: "chat:fake", offset, data: {} });
  assert.deepEqual(await messages.take(2), [6, 7]);
  assert.equal(sb.stats.duplicates, 2);

  socket.receive({ type: "reset", channel: "chat:fake", offset: 0, epoch: "e2" });
  assert.deepEqual(await resets.next(), { offset: 0, epoch: "e2" });
  assert.deepEqual(sub.position, { offset: 0, epoch: "e2" });

  // The next resubscribe resumes from the reset's position.
  socket.serverClose(1011, "session queue closed");
  clock.fireHeld();
  await until(() => FakeSocket.instances.length === 2);
  socket = FakeSocket.last();
  socket.accept();
  await until(() => socket.sent.length === 1);
  assert.deepEqual(socket.sent[0], { type: "subscribe", channel: "chat:fake", since: { offset: 0, epoch: "e2" }, id: socket.sent[0].id });
  sb.disconnect();
});

test("a channel without history cannot recover: its resubscribe reports recovered: false", async () => {
  const recoveries = new Inbox();
  const clock = new TestClock({ holdUpTo: 1e8, random: () => 0.5 });
  const sb = new Switchboard("ws://gateway.test/ws", {
    getToken: async () => "token",
    pingInterval: 0,
    requestTimeout: 1e9,
    WebSocket: FakeSocket,
    clock,
  });
  const sub = sb.subscribe("cursor:doc", { onRecover: recoveries.push });
  await until(() => FakeSocket.instances.length === 1);
  let socket = FakeSocket.last();
  socket.accept();
  await until(() => socket.sent.length === 1);
  socket.reply({}); // no history: no position
  assert.deepEqual(await sub.ready, {});
  assert.equal(sub.position, null);

  socket.serverClose(1006);
  clock.fireHeld();
  await until(() => FakeSocket.instances.length === 2);
  socket = FakeSocket.last();
  socket.accept();
  await until(() => socket.sent.length === 1);
  assert.equal(socket.sent[0].since, undefined, "no position to resume from");
  socket.reply({});
  assert.deepEqual(await recoveries.next(), { recovered: false });
  sb.disconnect();
});
