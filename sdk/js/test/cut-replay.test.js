// A cut replay: a resubscribe that missed more than the gateway's send queue
// holds gets `recovered: false` with `replayed_to` and the messages up to it;
// the SDK pages the rest through `history`, holds live messages back until
// the pages caught up, and delivers every message once, in order, before
// onRecover says recovered.

import { test, before, after, beforeEach } from "node:test";
import assert from "node:assert/strict";
import { Switchboard } from "../src/switchboard.js";
import { startGateway, signToken, Recorder, Inbox, TestClock, FakeSocket, until } from "./gateway.js";

// A small queue (8 KiB) and 1 KB messages: a replay holds 7 of them. History
// keeps 300, so the rest takes several pages of 100.
const QUEUE_BYTES = 8192;
const ENTRY_OVERHEAD = 64; // what the gateway's queue charges per frame
const CHANNEL = "feed:paged";
const PAD = "x".repeat(1000);

let gw;
before(async () => {
  gw = await startGateway({
    env: { SWITCHBOARD_SEND_QUEUE_BYTES: String(QUEUE_BYTES), SWITCHBOARD_MAX_FRAME_BYTES: "4096" },
    config: "[namespaces.feed]\nhistory_size = 300\n",
  });
});
after(() => gw?.stop());
beforeEach(() => FakeSocket.reset());

/** A WebSocket that records the frames the SDK sends and every line it receives. */
function recordingWebSocket(sent, received) {
  return class extends WebSocket {
    send(text) {
      sent.push(JSON.parse(text));
      super.send(text);
    }

    set onmessage(handler) {
      super.onmessage = handler
        ? (ev) => {
            if (typeof ev.data === "string") received.push(...ev.data.split("\n"));
            handler(ev);
          }
        : null;
    }

    get onmessage() {
      return super.onmessage;
    }
  };
}

test("a cut replay is paged through history: every message once, in order, then live ones", async (t) => {
  const sent = [];
  const received = [];
  const clock = new TestClock({ holdUpTo: 1000, realTimers: true, random: () => 0.5 });
  const sb = new Switchboard(gw.wsUrl, {
    getToken: async () => signToken({ sub: "pager" }),
    backoff: { min: 50, max: 1000 },
    pingInterval: 0,
    WebSocket: recordingWebSocket(sent, received),
    clock,
  });
  t.after(() => sb.disconnect());
  const messages = new Inbox();
  const recoveries = new Inbox();
  const errors = new Inbox();
  const sub = sb.subscribe(CHANNEL, {
    onMessage: (data, context) => messages.push({ n: data.n, offset: context.offset }),
    onRecover: recoveries.push,
    onError: errors.push,
  });
  const rec = new Recorder(sb);
  const start = await sub.ready;
  await recoveries.next();
  const { epoch } = start;
  await gw.publish(CHANNEL, { n: 1, pad: PAD });
  assert.deepEqual(await messages.next(), { n: 1, offset: start.offset + 1 });

  // Away while 250 messages of 1 KB are published: 250 KB to catch up.
  const mark = rec.mark;
  sb._dropConnection();
  await rec.waitState("disconnected", { from: mark });
  await clock.nextHeld();
  for (let n = 2; n <= 251; n++) await gw.publish(CHANNEL, { n, pad: PAD });
  const since = start.offset + 1;

  clock.fireHeld();
  await rec.waitState("connected", { from: mark });
  // Live messages published while the pages are read, or after.
  for (let n = 252; n <= 254; n++) await gw.publish(CHANNEL, { n, pad: PAD });

  // Every message exactly once, in order: the replay, the pages, the live ones.
  const got = await messages.take(253);
  assert.deepEqual(
    got,
    Array.from({ length: 253 }, (_, i) => ({ n: i + 2, offset: since + i + 1 })),
  );
  assert.deepEqual(sub.position, { offset: start.offset + 254, epoch });

  // What the gateway answered: the reply says where the replay stops, and
  // it stops where the next message would overflow the send queue. (Its
  // offset is 251, or above when a live message beat the resubscribe.)
  const subscribe = sent.filter((f) => f.type === "subscribe").at(-1);
  assert.deepEqual(subscribe.since, { offset: since, epoch });
  const at = received.findIndex((line) => JSON.parse(line).id === subscribe.id);
  const replyLine = JSON.parse(received[at]);
  const top = replyLine.result.offset;
  assert.ok(top >= start.offset + 251 && top <= start.offset + 254, `reply offset ${top}`);
  assert.deepEqual(await recoveries.next(), { recovered: true, offset: top, epoch });
  const replayedTo = replyLine.result.replayed_to;
  assert.deepEqual(replyLine, {
    type: "reply",
    id: subscribe.id,
    result: { offset: top, epoch, recovered: false, replayed_to: replayedTo },
  });
  const frame = (offset) =>
    JSON.stringify({ type: "message", channel: CHANNEL, offset, data: { n: offset - start.offset, pad: PAD } });
  let used = 0;
  let fits = since;
  while (used + frame(fits + 1).length + ENTRY_OVERHEAD <= QUEUE_BYTES) {
    used += frame(fits + 1).length + ENTRY_OVERHEAD;
    fits += 1;
  }
  assert.equal(replayedTo, fits, "the replay holds what the queue holds");
  assert.deepEqual(
    received.slice(at + 1, at + 1 + (replayedTo - since)),
    Array.from({ length: replayedTo - since }, (_, i) => frame(since + i + 1)),
    "the replayed messages follow the reply",
  );

  // The pages: from where the replay stopped, 100 at a time, each from
  // where the last one ended.
  const pages = sent.filter((f) => f.type === "history");
  assert.ok(pages.length >= 3, `${pages.length} pages for ${top - replayedTo} messages`);
  assert.deepEqual(
    { ...pages[0], id: 0 },
    { type: "history", channel: CHANNEL, since: { offset: replayedTo, epoch }, limit: 100, id: 0 },
  );
  assert.deepEqual(pages[1].since, { offset: replayedTo + 100, epoch });
  // Everything after the replay up to the reply came from history; the live
  // ones too when they were published before the pages caught up.
  assert.ok(sb.stats.paged >= top - replayedTo && sb.stats.paged <= start.offset + 254 - replayedTo, `${sb.stats.paged} paged`);
  assert.equal(errors.items.length, 0);
  assert.equal(rec.count("error"), 0);
});

test("over SSE too: the cut replay comes in the subscription event and the pages over POST /sse/command", async (t) => {
  const streamText = [];
  // Tees each stream's body, so the test reads the events the SDK read.
  const teeing = async (url, init) => {
    const res = await fetch(url, init);
    if (new URL(url).pathname !== "/sse" || !res.body) return res;
    const [mine, theirs] = res.body.tee();
    (async () => {
      const decoder = new TextDecoder();
      for await (const chunk of theirs) streamText.push(decoder.decode(chunk, { stream: true }));
    })().catch(() => {});
    return new Response(mine, { status: res.status, headers: res.headers });
  };
  const clock = new TestClock({ holdUpTo: 1000, realTimers: true, random: () => 0.5 });
  const sb = new Switchboard(gw.wsUrl, {
    getToken: async () => signToken({ sub: "sse-pager" }),
    backoff: { min: 50, max: 1000 },
    pingInterval: 0,
    transports: ["sse"],
    fetch: teeing,
    clock,
  });
  t.after(() => sb.disconnect());
  const messages = new Inbox();
  const recoveries = new Inbox();
  const sub = sb.subscribe(CHANNEL, {
    onMessage: (data, context) => messages.push({ n: data.n, offset: context.offset }),
    onRecover: recoveries.push,
  });
  const rec = new Recorder(sb);
  const start = await sub.ready;
  await recoveries.next();
  await gw.publish(CHANNEL, { n: 1, pad: PAD });
  await messages.next();
  // The offsets go on from the first test's: count from here.
  const base = start.offset;

  const mark = rec.mark;
  sb._dropConnection();
  await rec.waitState("disconnected", { from: mark });
  await clock.nextHeld();
  for (let n = 2; n <= 251; n++) await gw.publish(CHANNEL, { n, pad: PAD });
  clock.fireHeld();
  await rec.waitState("connected", { from: mark });
  for (let n = 252; n <= 254; n++) await gw.publish(CHANNEL, { n, pad: PAD });

  const got = await messages.take(253);
  assert.deepEqual(
    got,
    Array.from({ length: 253 }, (_, i) => ({ n: i + 2, offset: base + i + 2 })),
    "every message once, in order",
  );
  const recovery = await recoveries.next();
  assert.equal(recovery.recovered, true);
  // The second stream's subscription event said the replay was cut.
  const subscription = streamText
    .join("")
    .split("\n")
    .filter((line) => line.startsWith("data: "))
    .map((line) => JSON.parse(line.slice(6)))
    .filter((frame) => frame.type === "subscription")
    .at(-1);
  assert.equal(subscription.result.recovered, false);
  assert.ok(Number.isSafeInteger(subscription.result.replayed_to), JSON.stringify(subscription));
  assert.ok(sb.stats.paged >= subscription.result.offset - subscription.result.replayed_to, `${sb.stats.paged} paged`);
  assert.equal(rec.count("error"), 0);
});

// ---- corner cases with a fake socket ----

function fakeClient(handlers) {
  const clock = new TestClock({ holdUpTo: 1e8, random: () => 0.5 });
  const sb = new Switchboard("ws://gateway.test/ws", {
    getToken: async () => "token",
    pingInterval: 0,
    requestTimeout: 1e9,
    WebSocket: FakeSocket,
    clock,
  });
  const sub = sb.subscribe("feed:fake", handlers);
  return { sb, sub, clock };
}

/** Subscribes at offset 5, drops the connection and resubscribes: returns the new socket. */
async function resubscribed({ sb, clock }) {
  await until(() => FakeSocket.instances.length === 1);
  let socket = FakeSocket.last();
  socket.accept();
  await until(() => socket.sent.length === 1);
  socket.reply({ offset: 5, epoch: "e1" });
  socket.serverClose(1006);
  clock.fireHeld();
  await until(() => FakeSocket.instances.length === 2);
  socket = FakeSocket.last();
  socket.accept();
  await until(() => socket.sent.length === 1);
  assert.deepEqual(socket.sent[0].since, { offset: 5, epoch: "e1" });
  return socket;
}

const message = (offset) => ({ type: "message", channel: "feed:fake", offset, data: { offset } });

test("live messages that arrive before the pages caught up are delivered by the pages, in order", async () => {
  const delivered = [];
  const recoveries = new Inbox();
  const c = fakeClient({ onMessage: (data, ctx) => delivered.push(ctx.offset), onRecover: recoveries.push });
  const socket = await resubscribed(c);
  assert.deepEqual(await recoveries.next(), { recovered: true, offset: 5, epoch: "e1" }, "the first subscribe");
  // Cut at 7 of 10: 6 and 7 follow, then a live 11 before the page.
  socket.reply({ offset: 10, epoch: "e1", recovered: false, replayed_to: 7 });
  assert.deepEqual(socket.sent[1], { type: "history", channel: "feed:fake", since: { offset: 7, epoch: "e1" }, limit: 100, id: socket.sent[1].id });
  for (const offset of [6, 7, 11]) socket.receive(message(offset));
  assert.deepEqual(delivered, [6, 7], "11 waits: 8 to 10 come first");
  socket.reply({ offset: 11, epoch: "e1", recovered: true, messages: [8, 9, 10, 11].map(message) });
  socket.receive(message(12));
  assert.deepEqual(delivered, [6, 7, 8, 9, 10, 11, 12]);
  assert.deepEqual(await recoveries.next(), { recovered: true, offset: 10, epoch: "e1" });
  assert.equal(socket.sent.length, 2, "one page was enough");
  assert.deepEqual(c.sub.position, { offset: 12, epoch: "e1" });
  c.sb.disconnect();
});

test("a page that no longer continues (trimmed meanwhile) reports recovered: false and takes its position", async () => {
  const delivered = [];
  const recoveries = new Inbox();
  const c = fakeClient({ onMessage: (data, ctx) => delivered.push(ctx.offset), onRecover: recoveries.push });
  const socket = await resubscribed(c);
  assert.deepEqual(await recoveries.next(), { recovered: true, offset: 5, epoch: "e1" }, "the first subscribe");
  socket.reply({ offset: 10, epoch: "e1", recovered: false, replayed_to: 6 });
  socket.receive(message(6));
  socket.reply({ offset: 40, epoch: "e1", recovered: false, messages: [31, 32].map(message) });
  assert.deepEqual(await recoveries.next(), { recovered: false, offset: 40, epoch: "e1" });
  assert.deepEqual(c.sub.position, { offset: 40, epoch: "e1" });
  socket.receive(message(41));
  assert.deepEqual(delivered, [6, 41], "nothing from the page that does not continue");
  c.sb.disconnect();
});

test("a connection lost while paging resumes from the last message delivered", async () => {
  const c = fakeClient({});
  const socket = await resubscribed(c);
  socket.reply({ offset: 300, epoch: "e1", recovered: false, replayed_to: 6 });
  socket.receive(message(6));
  socket.reply({ offset: 300, epoch: "e1", recovered: true, messages: Array.from({ length: 100 }, (_, i) => message(7 + i)) });
  assert.deepEqual(socket.sent.at(-1).since, { offset: 106, epoch: "e1" }, "the next page");
  socket.serverClose(1006);
  c.clock.fireHeld();
  await until(() => FakeSocket.instances.length === 3);
  const next = FakeSocket.last();
  next.accept();
  await until(() => next.sent.length === 1);
  assert.deepEqual(next.sent[0].since, { offset: 106, epoch: "e1" });
  c.sb.disconnect();
});
