// format: "msgpack" against a real gateway (docs/protocol.md, "Formats and
// compression"): a MessagePack client and a JSON client on one channel get
// every message, whoever published it (either client, or the server API),
// each in its own format, checked on the raw frames (binary MessagePack
// maps, or JSON text); history and recovery work the same; a value with no
// JSON form is refused with bad_request and not published; over SSE a
// msgpack client speaks JSON.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
// An independent read of the raw frames: the npm package the SDK vendors.
import { decode } from "@msgpack/msgpack";
import { Switchboard } from "../src/switchboard.js";
import { startGateway, signToken, Recorder, Inbox, TestClock, FakeSocket, until } from "./gateway.js";

let gw;
before(async () => {
  gw = await startGateway();
});
after(() => gw?.stop());

/**
 * The global WebSocket, recording what it was opened with and every frame
 * both ways: {dir: "in" | "out", binary, frame} with `frame` decoded (JSON
 * text, one entry per line of a batched frame, or a MessagePack binary
 * frame).
 */
function recordingWebSocket(log) {
  return class extends globalThis.WebSocket {
    constructor(url, protocols) {
      if (protocols === undefined) super(url);
      else super(url, protocols);
      log.opened.push({ url, protocols, socket: this });
      this.addEventListener("message", (ev) => log.frames.push(...record("in", ev.data)));
    }

    send(data) {
      log.frames.push(...record("out", data));
      super.send(data);
    }
  };
}

/** A raw frame's entries: one per line of a (batched) text frame, one for a binary frame. */
function record(dir, data) {
  if (typeof data === "string") return data.split("\n").map((line) => ({ dir, binary: false, frame: JSON.parse(line) }));
  const bytes = data instanceof ArrayBuffer ? new Uint8Array(data) : new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  return [{ dir, binary: true, frame: decode(bytes) }];
}

function client(format, { user = `${format}-user`, ...options } = {}) {
  const log = { opened: [], frames: [] };
  const sb = new Switchboard(gw.wsUrl, {
    getToken: async () => signToken({ sub: user }),
    pingInterval: 0,
    format,
    WebSocket: recordingWebSocket(log),
    ...options,
  });
  const rec = new Recorder(sb);
  return { sb, log, rec };
}

// Keys and values of every JSON type, nested, and text beyond ASCII.
const DOCUMENT = {
  text: "héllo ✓ 𝄞",
  int: 42,
  negative: -7,
  big: 2 ** 40,
  float: 2.5,
  yes: true,
  no: false,
  nothing: null,
  list: [1, "two", [3], { four: 4 }],
  nested: { deeper: { deepest: "x".repeat(300) } },
};

test("a msgpack client and a JSON client on one channel get every message in their own format", async (t) => {
  const channel = "chat:formats";
  const mp = client("msgpack");
  const js = client("json");
  t.after(() => {
    mp.sb.disconnect();
    js.sb.disconnect();
  });
  const inbox = { msgpack: new Inbox(), json: new Inbox() };
  const mpSub = mp.sb.subscribe(channel, { onMessage: (data, { offset }) => inbox.msgpack.push({ data, offset }) });
  const jsSub = js.sb.subscribe(channel, { onMessage: (data, { offset }) => inbox.json.push({ data, offset }) });
  const [start] = await Promise.all([mpSub.ready, jsSub.ready]);

  // The handshake: the subprotocol asked for and chosen, no batch=1.
  const [opened] = mp.log.opened;
  assert.deepEqual(opened.protocols, ["switchboard.msgpack"]);
  assert.equal(opened.socket.protocol, "switchboard.msgpack");
  assert.equal(new URL(opened.url).searchParams.get("batch"), null, "a msgpack client must not ask for batch=1");
  assert.equal(js.log.opened[0].protocols, undefined, "a JSON client asks for no subprotocol");
  assert.equal(js.log.opened[0].socket.protocol, "");
  const welcome = { msgpack: await mp.rec.wait((e) => e.name === "welcome"), json: await js.rec.wait((e) => e.name === "welcome") };
  assert.equal(welcome.msgpack.format, "msgpack");
  assert.equal(welcome.json.format, "json");
  assert.equal(mp.log.frames.find((f) => f.dir === "in").frame.format, "msgpack", "the welcome frame says format msgpack");
  assert.equal(js.log.frames.find((f) => f.dir === "in").frame.format, undefined);

  // One message from each client and one from the server API.
  const sent = [
    { from: "msgpack", ...DOCUMENT },
    { from: "json", ...DOCUMENT },
    { from: "api", ...DOCUMENT },
  ];
  const results = [await mp.sb.publish(channel, sent[0]), await js.sb.publish(channel, sent[1]), await gw.publish(channel, sent[2])];
  assert.deepEqual(
    results.map((r) => r.offset),
    [1, 2, 3].map((n) => start.offset + n),
  );
  for (const format of ["msgpack", "json"]) {
    const got = await inbox[format].take(3);
    assert.deepEqual(
      got,
      sent.map((data, i) => ({ data, offset: start.offset + i + 1 })),
      `the ${format} client's messages`,
    );
  }

  // The same three messages through history, in either format.
  for (const c of [mp, js]) {
    const page = await c.sb.history(channel, { since: { offset: start.offset, epoch: start.epoch } });
    assert.equal(page.recovered, true);
    assert.deepEqual(
      page.messages.map((m) => m.data),
      sent,
    );
  }

  // The raw frames: binary MessagePack maps both ways for the msgpack
  // client, JSON text for the JSON client; the message frames carry the
  // documents as the subscribers saw them.
  for (const [c, binary] of [
    [mp, true],
    [js, false],
  ]) {
    const kinds = new Set(c.log.frames.map((f) => `${f.dir}:${f.binary ? "binary" : "text"}`));
    const expected = binary ? ["in:binary", "out:binary"] : ["in:text", "out:text"];
    assert.deepEqual([...kinds].sort(), expected, `${binary ? "msgpack" : "json"} frames`);
    const messages = c.log.frames.filter((f) => f.dir === "in" && f.frame.type === "message").map((f) => f.frame.data);
    assert.deepEqual(messages, sent);
    const commands = new Set(c.log.frames.filter((f) => f.dir === "out").map((f) => f.frame.type));
    assert.deepEqual([...commands].sort(), ["history", "publish", "subscribe"]);
  }
  assert.equal(mp.sb.stats.unknownFrames, 0);
  assert.equal(js.sb.stats.unknownFrames, 0);
});

test("a msgpack client recovers the messages published while it was away", async (t) => {
  const channel = "chat:formats-recovery";
  // Backoff timers (<= 1 s) are held until the test fires them, so the
  // messages "missed" are published while the client is surely away.
  const clock = new TestClock({ holdUpTo: 1000, realTimers: true, random: () => 0.5 });
  const mp = client("msgpack", { clock, backoff: { min: 50, max: 1000 } });
  const js = client("json");
  t.after(() => {
    mp.sb.disconnect();
    js.sb.disconnect();
  });
  const messages = new Inbox();
  const recoveries = new Inbox();
  const sub = mp.sb.subscribe(channel, {
    onMessage: (data, { offset }) => messages.push({ data, offset }),
    onRecover: recoveries.push,
  });
  js.sb.connect();
  const start = await sub.ready;
  await js.rec.waitState("connected");
  assert.deepEqual(await recoveries.next(), { recovered: true, offset: start.offset, epoch: start.epoch });
  await js.sb.publish(channel, { n: 1 });
  assert.deepEqual(await messages.next(), { data: { n: 1 }, offset: start.offset + 1 });

  const mark = mp.rec.mark;
  mp.sb._dropConnection();
  await mp.rec.waitState("disconnected", { from: mark });
  await clock.nextHeld();
  await js.sb.publish(channel, { n: 2, from: "json" });
  await gw.publish(channel, { n: 3, from: "api" });
  clock.fireHeld();
  await mp.rec.waitState("connected", { from: mark });
  assert.deepEqual(await recoveries.next(), { recovered: true, offset: start.offset + 3, epoch: start.epoch });
  await js.sb.publish(channel, { n: 4 });
  assert.deepEqual(await messages.take(3), [
    { data: { n: 2, from: "json" }, offset: start.offset + 2 },
    { data: { n: 3, from: "api" }, offset: start.offset + 3 },
    { data: { n: 4 }, offset: start.offset + 4 },
  ]);
  // The resubscribe went out as MessagePack, resuming from the position.
  const resubscribe = mp.log.frames.filter((f) => f.dir === "out" && f.frame.type === "subscribe").at(-1);
  assert.equal(resubscribe.binary, true);
  assert.deepEqual(resubscribe.frame.since, { offset: start.offset + 1, epoch: start.epoch });
  assert.equal(mp.log.opened.length, 2);
  assert.ok(mp.log.opened.every((o) => o.socket.protocol === "switchboard.msgpack"));
});

test("a value with no JSON form is refused with bad_request and nothing is published", async (t) => {
  const channel = "chat:formats-refused";
  const mp = client("msgpack");
  const js = client("json");
  t.after(() => {
    mp.sb.disconnect();
    js.sb.disconnect();
  });
  const seen = new Inbox();
  const start = await js.sb.subscribe(channel, { onMessage: (data, { offset }) => seen.push({ data, offset }) }).ready;
  mp.sb.connect();
  await mp.rec.waitState("connected");

  const refused = [
    [{ image: new Uint8Array([0x89, 0x50, 0x4e, 0x47]) }, /^frame has no JSON form: bin value at data\.image/],
    [{ at: new Date(0) }, /^frame has no JSON form: ext value at data\.at/],
    [{ ratio: Number.NaN }, /^frame has no JSON form: NaN or infinite float at data\.ratio/],
  ];
  for (const [data, message] of refused) {
    await assert.rejects(mp.sb.publish(channel, data), (err) => {
      assert.equal(err.code, "bad_request", err.message);
      assert.match(err.message, message);
      return true;
    });
  }
  // The bin value went out as one, in a binary frame: the refusal is the gateway's.
  const first = mp.log.frames.find((f) => f.dir === "out" && f.frame.type === "publish");
  assert.equal(first.binary, true);
  assert.ok(first.frame.data.image instanceof Uint8Array);

  // Nothing was published: the next message the subscriber sees is the
  // one after, at the next offset, and history holds only it.
  const after = await mp.sb.publish(channel, { ok: true });
  assert.equal(after.offset, start.offset + 1);
  assert.deepEqual(await seen.next(), { data: { ok: true }, offset: start.offset + 1 });
  const { body } = await gw.api("GET", `/api/history/${encodeURIComponent(channel)}?limit=100`);
  assert.deepEqual(
    body.messages.map((m) => m.data),
    [{ ok: true }],
  );
  assert.equal(mp.sb.state, "connected", "a refused command does not close the connection");
});

test("maxFrameBytes counts a MessagePack command's bytes", async (t) => {
  const channel = "chat:formats-large";
  const mp = client("msgpack");
  t.after(() => mp.sb.disconnect());
  const seen = new Inbox();
  await mp.sb.subscribe(channel, { onMessage: (data) => seen.push(data) }).ready;
  // 70,000 characters of ASCII: over the 65,536-byte default in either format.
  await assert.rejects(mp.sb.publish(channel, { text: "x".repeat(70_000) }), (err) => err.code === "too_large");
  // 60,000 two-byte characters: 60,000 UTF-16 units, but 120,000 bytes of UTF-8.
  await assert.rejects(mp.sb.publish(channel, { text: "é".repeat(60_000) }), (err) => err.code === "too_large");
  assert.equal(mp.log.frames.filter((f) => f.dir === "out" && f.frame.type === "publish").length, 0, "nothing was sent");
  // Just under the limit goes through, and the connection carries on.
  const text = "y".repeat(60_000);
  await mp.sb.publish(channel, { text });
  assert.deepEqual(await seen.next(), { text });
  assert.equal(typeof (await mp.sb.ping()), "number");
});

test("over SSE a msgpack client speaks JSON", async (t) => {
  const channel = "chat:formats-sse";
  const mp = client("msgpack", { transports: ["sse"] });
  t.after(() => mp.sb.disconnect());
  const messages = new Inbox();
  const sub = mp.sb.subscribe(channel, { onMessage: (data) => messages.push(data) });
  await sub.ready;
  const welcome = await mp.rec.wait((e) => e.name === "welcome");
  assert.equal(welcome.transport, "sse");
  assert.equal(welcome.format, "json");
  await mp.sb.publish(channel, DOCUMENT);
  await gw.publish(channel, { from: "api" });
  assert.deepEqual(await messages.take(2), [DOCUMENT, { from: "api" }]);
  assert.equal(mp.log.opened.length, 0, "no WebSocket was opened");
});

test('format: "msgpack" stops with unsupported_format when the socket opens without the subprotocol', async (t) => {
  // A corner case no conforming WebSocket lets through (browsers and
  // Node fail such a handshake), played with the harness's fake socket.
  FakeSocket.reset();
  const opened = [];
  class NoSubprotocol extends FakeSocket {
    constructor(url, protocols) {
      super(url);
      opened.push(protocols);
      this.protocol = "";
    }
  }
  const sb = new Switchboard("ws://127.0.0.1:9/ws", {
    getToken: () => "jwt",
    format: "msgpack",
    transports: ["websocket"],
    WebSocket: NoSubprotocol,
    pingInterval: 0,
  });
  t.after(() => sb.disconnect());
  const rec = new Recorder(sb);
  sb.connect();
  await until(() => FakeSocket.instances.length === 1);
  const socket = FakeSocket.last();
  assert.deepEqual(opened, [["switchboard.msgpack"]]);
  assert.equal(socket.binaryType, "arraybuffer");
  socket.open();
  const stopped = await rec.waitState("stopped");
  assert.equal(stopped.error.code, "unsupported_format");
  assert.match(stopped.error.message, /switchboard\.msgpack/);
  assert.equal(socket.closedWith?.code, 1000);
});

test("format is checked by the constructor", () => {
  for (const format of ["cbor", "MSGPACK", 1, ["msgpack"]]) {
    assert.throws(
      () => new Switchboard("ws://127.0.0.1:9/ws", { getToken: () => "jwt", format }),
      (err) => err.code === "bad_options" && /options\.format/.test(err.message),
      String(format),
    );
  }
});
