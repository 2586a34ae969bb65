// Formats and compression in Chromium (docs/protocol.md, "Formats and
// compression"): a demo page with the SDK's `format: "msgpack"` chats with a
// JSON page in binary MessagePack frames; and against a node with
// permessage-deflate on and the channel's namespace opted in, pages of
// either format receive messages larger than the threshold intact, the
// handshake shows the extension Chromium offered and the node accepted, and
// the node's wire metrics show compressed bytes sent in that format.

import assert from "node:assert/strict";
import * as fs from "node:fs";
import { test } from "node:test";

import { decode } from "@msgpack/msgpack";

import { connected, DEV_CONFIG, eventually, say, snapshot, token, withHarness } from "./harness.js";

const LOBBY = "chat:lobby"; // the demo's channel
const DOCS = "chat:docs";

/**
 * Records the page's WebSocket frames from its first socket on, decoded:
 * {dir: "in" | "out", binary, frame} (a batched text frame gives one entry
 * per line); their URLs; and, through the
 * DevTools protocol, the handshakes' headers: {request, response}
 * (lower-case names).
 */
async function watchSockets(page, frames, handshakes, urls) {
  page.on("websocket", (ws) => {
    urls.push(ws.url());
    // A JSON page asks for batch=1: a text frame may hold several frames, one per line.
    const push = (dir) => ({ payload }) => {
      if (typeof payload !== "string") frames.push({ dir, binary: true, frame: decode(payload) });
      else for (const line of payload.split("\n")) frames.push({ dir, binary: false, frame: JSON.parse(line) });
    };
    ws.on("framereceived", push("in"));
    ws.on("framesent", push("out"));
  });
  const cdp = await page.context().newCDPSession(page);
  await cdp.send("Network.enable");
  const byId = new Map();
  const lower = (headers) => Object.fromEntries(Object.entries(headers ?? {}).map(([k, v]) => [k.toLowerCase(), v]));
  cdp.on("Network.webSocketWillSendHandshakeRequest", ({ requestId, request }) => {
    const entry = { request: lower(request.headers), response: null };
    byId.set(requestId, entry);
    handshakes.push(entry);
  });
  cdp.on("Network.webSocketHandshakeResponseReceived", ({ requestId, response }) => {
    const entry = byId.get(requestId);
    if (entry) entry.response = { status: response.status, headers: lower(response.headers) };
  });
}

/** Opens the demo on `node` as `user` in `format`, watching its sockets; waits until connected. */
async function openDemo(h, browser, node, user, format) {
  const frames = [];
  const handshakes = [];
  const urls = [];
  const fragment = `#token=${token(user).jwt}${format === "msgpack" ? "&format=msgpack" : ""}`;
  const page = await h.open(browser, `${node.base}/demo/${fragment}`, `${user} (${format})`, {
    setup: (p) => watchSockets(p, frames, handshakes, urls),
  });
  page.frames_ = frames;
  page.handshakes = handshakes;
  page.socketUrls = urls;
  const shown = await connected(page);
  const welcome = shown.log.filter((e) => e.kind === "welcome").at(-1);
  assert.equal(welcome.transport, "websocket", `${page.label} connected over ${welcome.transport}`);
  assert.equal(welcome.format, format, `${page.label}'s welcome event says format ${welcome.format}`);
  return page;
}

/** The value of a counter of the Prometheus text with these labels (0 when absent). */
function counter(text, name, labels) {
  for (const line of text.split("\n")) {
    if (!line.startsWith(`${name}{`)) continue;
    const close = line.lastIndexOf("}");
    const set = Object.fromEntries([...line.slice(name.length + 1, close).matchAll(/(\w+)="([^"]*)"/g)].map((m) => [m[1], m[2]]));
    if (Object.entries(labels).every(([key, value]) => set[key] === value)) return Number(line.slice(close + 1).trim());
  }
  return 0;
}

function assertFrames(page, binary) {
  const kinds = new Set(page.frames_.map((f) => `${f.dir}:${f.binary ? "binary" : "text"}`));
  const expected = binary ? ["in:binary", "out:binary"] : ["in:text", "out:text"];
  assert.deepEqual([...kinds].sort(), expected, `${page.label}'s frames`);
}

test("a msgpack page and a JSON page chat, each in its own frames", { timeout: 120_000 }, (t) =>
  withHarness(t, async (h) => {
    const node = await h.gateway({ nodeId: "gw-formats" });
    const browser = await h.browser();
    const alice = await openDemo(h, browser, node, "alice", "msgpack");
    const bob = await openDemo(h, browser, node, "bob", "json");

    // The handshakes: the subprotocol asked for and chosen, or neither.
    const [aliceHandshake] = alice.handshakes;
    assert.equal(aliceHandshake.request["sec-websocket-protocol"], "switchboard.msgpack");
    assert.equal(aliceHandshake.response?.headers["sec-websocket-protocol"], "switchboard.msgpack");
    assert.equal(new URL(alice.socketUrls[0]).searchParams.get("batch"), null, "a msgpack page does not ask for batch=1");
    assert.equal(bob.handshakes[0].request["sec-websocket-protocol"], undefined);
    assert.equal(bob.handshakes[0].response?.headers["sec-websocket-protocol"], undefined);

    await say(alice, "hello from a msgpack page ✓");
    await say(bob, "and back in JSON");
    await node.publish(LOBBY, { user: "server", text: "from the server API" });
    const expected = [
      { user: "alice", text: "hello from a msgpack page ✓" },
      { user: "bob", text: "and back in JSON" },
      { user: "server", text: "from the server API" },
    ];
    const shown = {};
    for (const page of [alice, bob]) {
      shown[page.label] = await eventually(
        async () => {
          const { messages } = await snapshot(page);
          return messages.length === expected.length ? messages : false;
        },
        { what: `${page.label} showing three messages` },
      );
      assert.deepEqual(
        shown[page.label].map(({ user, text }) => ({ user, text })),
        expected,
        `${page.label} shows the conversation`,
      );
    }
    assert.deepEqual(shown[alice.label], shown[bob.label], "both pages show the same offsets");

    // Presence and history (the demo loads both) worked in MessagePack too.
    await eventually(async () => (await snapshot(alice)).presence.join() === "alice,bob", {
      what: "alice listing alice and bob in presence",
    });

    // On the wire: MessagePack maps in binary frames both ways for alice,
    // JSON text for bob; alice's message frames carry what bob's do.
    assertFrames(alice, true);
    assertFrames(bob, false);
    const carried = (page) => page.frames_.filter((f) => f.dir === "in" && f.frame.type === "message").map((f) => f.frame);
    assert.deepEqual(carried(alice), carried(bob));
    assert.equal(carried(alice).length, 3);
    assert.equal(alice.frames_.find((f) => f.dir === "in").frame.format, "msgpack", "the welcome frame says msgpack");
    const commands = new Set(alice.frames_.filter((f) => f.dir === "out").map((f) => f.frame.type));
    for (const type of ["subscribe", "publish", "presence", "history"]) assert.ok(commands.has(type), `alice sent ${type} in MessagePack`);

    for (const page of [alice, bob]) {
      const { error, state } = await snapshot(page);
      assert.equal(error, null, `${page.label} shows no error`);
      assert.equal(state, "connected");
      assert.deepEqual(page.problems, [], `${page.label} logged no errors`);
    }
  }),
);

test("with permessage-deflate, JSON and msgpack pages receive large messages intact, compressed on the wire", { timeout: 120_000 }, (t) =>
  withHarness(t, async (h) => {
    const dev = fs.readFileSync(DEV_CONFIG, "utf8");
    const config = dev.replace("[namespaces.chat]\n", "[namespaces.chat]\ndeflate = true\n");
    assert.notEqual(config, dev, "config/dev.toml has no [namespaces.chat] table to opt in");
    const node = await h.gateway({ nodeId: "gw-deflate", env: { SWITCHBOARD_DEFLATE: "true" }, config });
    const browser = await h.browser();
    const pages = { json: await openDemo(h, browser, node, "carol", "json"), msgpack: await openDemo(h, browser, node, "dave", "msgpack") };

    // Chromium offered permessage-deflate, and the node took it, with no
    // context takeover both ways.
    for (const page of Object.values(pages)) {
      const [handshake] = page.handshakes;
      assert.match(handshake.request["sec-websocket-extensions"] ?? "", /permessage-deflate/, `${page.label}: Chromium's offer`);
      assert.equal(
        handshake.response?.headers["sec-websocket-extensions"],
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
        `${page.label}: the node's answer`,
      );
    }

    // Each page subscribes through the demo's SDK to a second channel of
    // the opted-in namespace and keeps what it receives.
    for (const page of Object.values(pages)) {
      await page.evaluate(async (channel) => {
        window.docs = [];
        await window.demo.sb.subscribe(channel, { onMessage: (data) => window.docs.push(data) }).ready;
      }, DOCS);
    }

    // Documents well over the 256-byte threshold (about 5 KB of JSON each).
    const docs = Array.from({ length: 5 }, (_, i) => ({
      id: i,
      title: `report ${i}`,
      rows: Array.from({ length: 50 }, (_, r) => ({
        row: r,
        name: `item ${i}-${r}`,
        price: Math.round(r * 1.25 * 100) / 100 + i,
        tags: ["alpha", "beta", r % 3 === 0 ? "gamma" : "delta"],
        ok: r % 2 === 0,
        note: null,
      })),
    }));
    const rawBytes = docs.map((doc) => Buffer.byteLength(JSON.stringify(doc)));
    assert.ok(Math.min(...rawBytes) > 4096, `the documents are over 4 KB: ${rawBytes}`);

    const wire = (text, format) => counter(text, "switchboard_wire_sent_bytes_total", { format, compression: "deflate" });
    const before = await node.metrics();
    for (const doc of docs) await node.publish(DOCS, doc);

    for (const [format, page] of Object.entries(pages)) {
      const got = await eventually(
        async () => {
          const received = await page.evaluate(() => window.docs);
          return received.length === docs.length ? received : false;
        },
        { what: `${page.label} receiving ${docs.length} documents` },
      );
      assert.deepEqual(got, docs, `${page.label} received the documents intact`);
      const frames = page.frames_.filter((f) => f.dir === "in" && f.frame.type === "message" && f.frame.channel === DOCS);
      assert.equal(frames.length, docs.length);
      assert.ok(frames.every((f) => f.binary === (format === "msgpack")), `${page.label}: message frames in ${format}`);
    }

    const after = await node.metrics();
    const total = rawBytes.reduce((a, b) => a + b, 0);
    for (const format of ["json", "msgpack"]) {
      const sent = wire(after, format) - wire(before, format);
      assert.ok(sent > 0, `switchboard_wire_sent_bytes_total{format="${format}",compression="deflate"} did not grow`);
      assert.ok(sent < total, `${sent} compressed bytes sent in ${format} for ${total} bytes of JSON documents`);
      t.diagnostic(`${format}: ${sent} bytes of deflated frames on the wire for ${total} bytes of JSON documents`);
    }
    for (const page of Object.values(pages)) {
      const { error, state } = await snapshot(page);
      assert.equal(error, null, `${page.label} shows no error`);
      assert.equal(state, "connected");
      assert.deepEqual(page.problems, [], `${page.label} logged no errors`);
    }
  }),
);
