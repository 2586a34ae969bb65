// Transport choice and the SSE stream reader, with a fake WebSocket and a
// fake fetch playing the gateway (protocol corner cases a real node does not
// produce on demand: chunk boundaries, CRLF, a proxy that opens the upgrade
// and passes nothing). The same behaviour against a real gateway is in
// sse.test.js.

import { test, beforeEach } from "node:test";
import assert from "node:assert/strict";
import { Switchboard } from "../src/switchboard.js";
import { Recorder, Inbox, TestClock, FakeSocket, until } from "./gateway.js";

beforeEach(() => FakeSocket.reset());

/**
 * A fetch standing for the gateway: the probe answers `probeStatus`, each
 * GET /sse gets a stream the test writes to (`streams`), each POST
 * /sse/command is answered by `onCommand(frame, request)` ({status, body}).
 */
function fakeGateway({ probeStatus = 204, onCommand } = {}) {
  const streams = [];
  const commands = [];
  const probes = [];
  const fetch = async (url, init = {}) => {
    const u = new URL(url);
    if (u.pathname === "/ws") {
      probes.push(u);
      return new Response(null, { status: probeStatus });
    }
    if (u.pathname === "/sse") {
      let controller;
      const body = new ReadableStream({ start: (c) => (controller = c) });
      const stream = {
        url: u,
        headers: init.headers,
        write: (text) => controller.enqueue(new TextEncoder().encode(text)),
        end: () => controller.close(),
      };
      streams.push(stream);
      return new Response(body, { status: 200, headers: { "content-type": "text/event-stream" } });
    }
    if (u.pathname === "/sse/command") {
      const frame = JSON.parse(init.body);
      commands.push({ url: u, headers: init.headers, frame });
      const { status = 200, body } = (await onCommand?.(frame)) ?? { body: { type: "reply", id: frame.id, result: {} } };
      return new Response(body === undefined ? null : JSON.stringify(body), { status });
    }
    throw new TypeError(`unexpected fetch ${url}`);
  };
  return { fetch, streams, commands, probes };
}

function client(gateway, options = {}) {
  const clock = new TestClock({ holdUpTo: 1e8, random: () => 0.5 });
  const sb = new Switchboard("ws://gateway.test/ws", {
    getToken: async () => "token-1",
    backoff: { min: 100, max: 1000 },
    requestTimeout: 1e9, // beyond holdUpTo: never fires here
    pingInterval: 0,
    WebSocket: FakeSocket,
    fetch: gateway.fetch,
    clock,
    ...options,
  });
  return { sb, clock, rec: new Recorder(sb) };
}

const event = (frame, id) => `${id === undefined ? "" : `id: ${id}\n`}data: ${JSON.stringify(frame)}\n\n`;
const welcome = { type: "welcome", connection_id: "n1.x.1", node_id: "n1", user: "tester", expires_in: 3600, transport: "sse" };

test("a refused upgrade the probe says the node would take (204) falls back to SSE at once, token in Authorization", async () => {
  const gw = fakeGateway();
  const c = client(gw);
  const messages = new Inbox();
  const sub = c.sb.subscribe("chat:a", { onMessage: (data, ctx) => messages.push({ data, offset: ctx.offset }) });
  await until(() => FakeSocket.instances.length === 1);
  assert.equal(c.sb.transport, "websocket");
  FakeSocket.last().fail();
  // No backoff: the next transport is tried at once (a 0 ms timer).
  assert.equal(await c.clock.nextHeld(), 0);
  assert.equal(gw.probes.length, 1);
  c.clock.fireHeld();
  await until(() => gw.streams.length === 1);
  const stream = gw.streams[0];
  assert.equal(stream.url.href, "http://gateway.test/sse?channel=chat%3Aa");
  assert.equal(stream.headers.authorization, "Bearer token-1");
  assert.equal(stream.headers["last-event-id"], undefined, "a fresh start names no position");
  assert.equal(c.sb.transport, "sse");

  // CRLF line ends, a comment, and events split at awkward places.
  const text =
    event(welcome).replaceAll("\n", "\r\n") +
    ": ping\n\n" +
    event({ type: "subscription", channel: "chat:a", result: { offset: 4, epoch: "e1" } }, "4:e1") +
    event({ type: "message", channel: "chat:a", offset: 5, data: { n: 5 } }, "5:e1");
  // Cuts: inside a field name, between a CR and its LF, inside the JSON.
  const crlf = text.indexOf("\r\n");
  let from = 0;
  for (const cut of [3, crlf + 1, crlf + 30, text.length]) {
    stream.write(text.slice(from, cut));
    from = cut;
  }
  await c.rec.waitState("connected");
  assert.deepEqual(await sub.ready, { offset: 4, epoch: "e1" });
  assert.deepEqual(await messages.next(), { data: { n: 5 }, offset: 5 });
  const shown = await c.rec.wait((e) => e.name === "welcome");
  assert.equal(shown.transport, "sse");
  c.sb.disconnect();
});

test("an upgrade that opens but passes nothing falls back after fallbackTimeout; SSE then stays the transport", async () => {
  const gw = fakeGateway();
  const c = client(gw, { fallbackTimeout: 3000 });
  const messages = new Inbox();
  const sub = c.sb.subscribe("chat:a", { onMessage: (data, ctx) => messages.push({ data, offset: ctx.offset }) });
  await until(() => FakeSocket.instances.length === 1);
  FakeSocket.last().open();
  assert.equal(await c.clock.nextHeld(), 3000, "the fallback timer starts at open");
  c.clock.fireHeld();
  assert.equal(FakeSocket.last().closedWith?.code, 4000, "the silent socket is closed");
  assert.equal(await c.clock.nextHeld(), 0);
  c.clock.fireHeld();
  await until(() => gw.streams.length === 1);
  gw.streams[0].write(event(welcome) + event({ type: "subscription", channel: "chat:a", result: { offset: 4, epoch: "e1" } }, "4:e1"));
  await sub.ready;
  assert.deepEqual(
    [...c.clock.held.values()].map((t) => t.ms),
    [3600 * 800],
    "the welcome cancelled the stream's fallback timer (the token refresh is due at 80%)",
  );
  gw.streams[0].write(event({ type: "message", channel: "chat:a", offset: 5, data: "five" }, "5:e1"));
  assert.deepEqual(await messages.next(), { data: "five", offset: 5 });

  // The stream ends without a close event (a node died): backoff, then SSE
  // again (it worked), resuming from the position.
  const mark = c.rec.mark;
  gw.streams[0].end();
  await c.rec.waitState("disconnected", { from: mark });
  assert.equal(await c.clock.nextHeld(), 0.5 * 100);
  c.clock.fireHeld();
  await until(() => gw.streams.length === 2);
  assert.equal(FakeSocket.instances.length, 1, "no new WebSocket: the transport that worked is kept");
  assert.equal(gw.streams[1].headers["last-event-id"], "5:e1");
  c.sb.subscribe("chat:b", {});
  // A second channel while the stream opens: named once the welcome says
  // which channels the stream has, by a reopen naming both.
  gw.streams[1].write(
    event({ ...welcome, connection_id: "n1.x.2" }) +
      event({ type: "subscription", channel: "chat:a", result: { offset: 6, epoch: "e1", recovered: true } }, "6:e1") +
      event({ type: "message", channel: "chat:a", offset: 6, data: "six" }, "6:e1"),
  );
  assert.deepEqual(await messages.next(), { data: "six", offset: 6 });
  await until(() => gw.streams.length === 3);
  assert.equal(gw.streams[2].url.search, "?channel=chat%3Aa&channel=chat%3Ab");
  assert.equal(gw.streams[2].headers["last-event-id"], "6:e1,", "one place per channel, empty for none");
  c.sb.disconnect();
});

test("commands go to POST /sse/command with the stream's connection id; a 404 ends the stream", async () => {
  const gw = fakeGateway({
    onCommand: (frame) =>
      frame.type === "publish"
        ? { body: { type: "reply", id: frame.id, result: { offset: 9, epoch: "e1" } } }
        : frame.type === "presence"
          ? { status: 404, body: { error: "not_found", message: "no stream n1.x.1 on this node" } }
          : { status: 503, body: { error: "unavailable", message: "the stream is closing" } },
  });
  const c = client(gw, { transports: ["sse"] });
  c.sb.connect();
  await until(() => gw.streams.length === 1);
  gw.streams[0].write(event(welcome));
  await c.rec.waitState("connected");
  assert.deepEqual(await c.sb.publish("chat:a", { hi: 1 }), { offset: 9, epoch: "e1" });
  const sent = gw.commands.at(-1);
  assert.equal(sent.url.href, "http://gateway.test/sse/command?connection=n1.x.1");
  assert.equal(sent.headers.authorization, "Bearer token-1");
  assert.deepEqual(sent.frame, { type: "publish", channel: "chat:a", data: { hi: 1 }, id: sent.frame.id });
  await assert.rejects(c.sb.history("chat:a"), (err) => err.code === "unavailable" && err.message === "the stream is closing");
  const mark = c.rec.mark;
  await assert.rejects(c.sb.presence("chat:a"), (err) => err.code === "disconnected");
  await c.rec.waitState("disconnected", { from: mark });
  c.sb.disconnect();
});

test("close events follow the close-code table: 4001 reconnects with a new token, 4003 stops", async () => {
  const gw = fakeGateway();
  let tokens = 0;
  const c = client(gw, { transports: ["sse"], getToken: async () => `token-${++tokens}` });
  c.sb.connect();
  await until(() => gw.streams.length === 1);
  gw.streams[0].write(event(welcome));
  await c.rec.waitState("connected");
  let mark = c.rec.mark;
  gw.streams[0].write(event({ type: "close", code: 4001, reason: "token expired" }));
  const closed = await c.rec.waitState("disconnected", { from: mark });
  assert.deepEqual([closed.code, closed.reason], [4001, "token expired"]);
  c.clock.fireHeld();
  await until(() => gw.streams.length === 2);
  assert.equal(gw.streams[1].headers.authorization, "Bearer token-2", "a new token after 4001");
  gw.streams[1].write(event(welcome));
  mark = c.rec.mark;
  gw.streams[1].write(event({ type: "close", code: 4003, reason: "disconnected by the server API" }));
  const stopped = await c.rec.waitState("stopped", { from: mark });
  assert.equal(stopped.error.code, "disconnected_by_server");
  assert.equal(gw.streams.length, 2);
});

test("a stream refused with 400 naming a channel fails that subscription and opens without it", async () => {
  let refused = false;
  const gw = fakeGateway();
  const fetch = async (url, init) => {
    if (!refused && new URL(url).pathname === "/sse") {
      refused = true;
      const body = { error: "bad_request", message: 'channel "bad name": channel names are 1 to 255 characters' };
      return new Response(JSON.stringify(body), { status: 400 });
    }
    return gw.fetch(url, init);
  };
  const c = client({ fetch }, { transports: ["sse"] });
  const bad = c.sb.subscribe("bad name");
  const good = c.sb.subscribe("chat:ok");
  await assert.rejects(bad.ready, (err) => err.code === "bad_request" && err.status === 400);
  assert.equal(bad.state, "failed");
  c.clock.fireHeld();
  await until(() => gw.streams.length === 1);
  assert.equal(gw.streams[0].url.search, "?channel=chat%3Aok");
  gw.streams[0].write(event(welcome) + event({ type: "subscription", channel: "chat:ok", result: {} }, ""));
  assert.deepEqual(await good.ready, {});
  c.sb.disconnect();
});

test("a live message that overtakes a history page's answer during a catch-up is paged, not lost", async () => {
  const pages = [];
  const gw = fakeGateway({
    onCommand: (frame) =>
      frame.type === "history" ? new Promise((resolve) => pages.push({ frame, answer: (body) => resolve({ body }) })) : undefined,
  });
  const c = client(gw, { transports: ["sse"] });
  const delivered = [];
  const recoveries = new Inbox();
  c.sb.subscribe("feed:x", { onMessage: (data, ctx) => delivered.push(ctx.offset), onRecover: recoveries.push });
  await until(() => gw.streams.length === 1);
  gw.streams[0].write(event(welcome) + event({ type: "subscription", channel: "feed:x", result: { offset: 5, epoch: "e1" } }, "5:e1"));
  await recoveries.next();
  gw.streams[0].end();
  await c.clock.nextHeld();
  c.clock.fireHeld();
  await until(() => gw.streams.length === 2);
  assert.equal(gw.streams[1].headers["last-event-id"], "5:e1");
  const message = (offset) => event({ type: "message", channel: "feed:x", offset, data: offset }, `${offset}:e1`);
  // Cut at 7 of 10: 6 and 7 follow; the SDK asks for a page from 7.
  gw.streams[1].write(
    event({ ...welcome, connection_id: "n1.x.2" }) +
      event({ type: "subscription", channel: "feed:x", result: { offset: 10, epoch: "e1", recovered: false, replayed_to: 7 } }, "10:e1") +
      message(6) +
      message(7),
  );
  await until(() => pages.length === 1);
  assert.deepEqual(pages[0].frame.since, { offset: 7, epoch: "e1" });
  // 11, published after the page was read (its top is 10), comes on the
  // stream before the page's answer comes on its own request.
  gw.streams[1].write(message(11));
  await until(() => delivered.length === 2);
  const page = (top, offsets) => ({
    type: "reply",
    id: pages.at(-1).frame.id,
    result: { offset: top, epoch: "e1", recovered: true, messages: offsets.map((o) => ({ type: "message", channel: "feed:x", offset: o, data: o })) },
  });
  pages[0].answer(page(10, [8, 9, 10]));
  await until(() => pages.length === 2);
  assert.deepEqual(pages[1].frame.since, { offset: 10, epoch: "e1" }, "one more page: 11 was seen and dropped");
  pages[1].answer(page(11, [11]));
  assert.deepEqual(await recoveries.next(), { recovered: true, offset: 10, epoch: "e1" });
  assert.deepEqual(delivered, [6, 7, 8, 9, 10, 11]);
  c.sb.disconnect();
});

test("a refusal the probe explains (401, 403, 429) is handled as before: no fallback", async () => {
  for (const [status, body] of [
    [401, { error: "unauthorized", message: "token has expired" }],
    [403, { error: "forbidden_origin", message: "origin not allowed" }],
    [429, { error: "rate_limited", message: "too many connections" }],
  ]) {
    FakeSocket.reset();
    const gw = fakeGateway();
    const fetch = async (url, init) =>
      new URL(url).pathname === "/ws" ? new Response(JSON.stringify(body), { status }) : gw.fetch(url, init);
    const c = client({ fetch }, { maxAuthFailures: 1 });
    c.sb.connect();
    await until(() => FakeSocket.instances.length === 1);
    FakeSocket.last().fail();
    if (status === 429) {
      assert.equal(await c.clock.nextHeld(), 1000 + 0.5 * 100, "Retry-After (1 s) plus a jittered backoff");
      c.clock.fireHeld();
      await until(() => FakeSocket.instances.length === 2);
    } else {
      const stopped = await c.rec.waitState("stopped");
      assert.equal(stopped.error.code, body.error);
    }
    assert.equal(gw.streams.length, 0, `no SSE attempt after a ${status}`);
    assert.equal(c.sb.transport, "websocket");
    c.sb.disconnect();
  }
});
