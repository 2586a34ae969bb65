// Commands and replies against a real gateway, and the offline behaviour.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { Switchboard, SwitchboardError } from "../src/switchboard.js";
import { startGateway, signToken, Recorder, Inbox } from "./gateway.js";

let gw;
before(async () => {
  gw = await startGateway();
});
after(() => gw?.stop());

function client(claims = {}, options = {}) {
  const sb = new Switchboard(gw.wsUrl, {
    getToken: async () => signToken(claims),
    pingInterval: 0,
    ...options,
  });
  return { sb, rec: new Recorder(sb) };
}

async function rejection(promise) {
  try {
    await promise;
  } catch (err) {
    return err;
  }
  assert.fail("expected the promise to reject");
}

test("subscribe, publish, presence, history, ping and unsubscribe get their replies", async (t) => {
  const { sb, rec } = client({ sub: "alice", info: { name: "Alice" } });
  t.after(() => sb.disconnect());
  const messages = new Inbox();
  const recoveries = new Inbox();
  const sub = sb.subscribe("chat:lobby", { onMessage: messages.push, onRecover: recoveries.push });

  const ready = await sub.ready;
  assert.equal(typeof ready.offset, "number");
  assert.equal(typeof ready.epoch, "string");
  assert.equal(sub.state, "subscribed");
  assert.equal(sb.state, "connected");
  const welcome = await rec.wait((e) => e.name === "welcome");
  assert.equal(welcome.user, "alice");
  assert.ok(welcome.expires_in > 3500, `expires_in ${welcome.expires_in}`);
  assert.deepEqual(await recoveries.next(), { recovered: true, offset: ready.offset, epoch: ready.epoch });

  const published = await sub.publish({ text: "hi" });
  assert.equal(published.offset, ready.offset + 1);
  assert.equal(published.epoch, ready.epoch);
  const [data, context] = await messages.next();
  assert.deepEqual(data, { text: "hi" });
  assert.deepEqual(context, { channel: "chat:lobby", offset: published.offset });
  assert.deepEqual(sub.position, { offset: published.offset, epoch: ready.epoch });

  const members = await sub.presence();
  assert.deepEqual(members, [{ user: "alice", connection_id: welcome.connection_id, info: { name: "Alice" } }]);

  const history = await sub.history({ limit: 10 });
  assert.equal(history.offset, published.offset);
  assert.deepEqual(
    history.messages.map((m) => [m.offset, m.data]),
    [[published.offset, { text: "hi" }]],
  );

  const rtt = await sb.ping();
  assert.equal(typeof rtt, "number");
  assert.ok(rtt >= 0);

  // A server API publish reaches the subscriber like any other.
  await gw.publish("chat:lobby", { text: "from the backend" });
  assert.deepEqual((await messages.next())[0], { text: "from the backend" });

  await sub.unsubscribe();
  assert.equal(sub.state, "unsubscribed");
  assert.deepEqual(await sb.presence("chat:lobby"), []);
  // Nothing more arrives for the channel: a later message on another channel
  // of the same connection comes after anything queued before it.
  const other = new Inbox();
  await sb.subscribe("chat:other", { onMessage: other.push }).ready;
  await gw.publish("chat:lobby", { text: "after unsubscribe" });
  await gw.publish("chat:other", { text: "marker" });
  assert.deepEqual((await other.next())[0], { text: "marker" });
  assert.equal(messages.items.length, 0, "no message after unsubscribe");
  assert.equal(rec.count("error"), 0);
});

test("server errors reject with the server's code and message", async (t) => {
  const { sb } = client({ sub: "reader", channels: ["news:*"], publish: [] });
  t.after(() => sb.disconnect());
  const sub = sb.subscribe("news:today");
  await sub.ready;

  const forbidden = await rejection(sub.publish({ text: "nope" }));
  assert.ok(forbidden instanceof SwitchboardError);
  assert.equal(forbidden.code, "forbidden");
  assert.equal(forbidden.message, "token does not grant publishing to news:today");

  const badLimit = await rejection(sub.history({ limit: 0 }));
  assert.equal(badLimit.code, "bad_request");
  assert.match(badLimit.message, /limit must be a whole number/);

  // A subscribe the token does not grant: ready rejects, onError hears it,
  // and the subscription is gone (a second subscribe is allowed).
  const errors = new Inbox();
  const denied = sb.subscribe("admin:audit", { onError: errors.push });
  const err = await rejection(denied.ready);
  assert.equal(err.code, "forbidden");
  assert.equal((await errors.next()).code, "forbidden");
  assert.equal(denied.state, "failed");
  assert.doesNotThrow(() => sb.subscribe("admin:audit").ready.catch(() => {}));

  // The connection survives all of it.
  assert.equal(sb.state, "connected");
  await sb.ping();
});

test("a frame over maxFrameBytes is refused locally, without losing the connection", async (t) => {
  const { sb } = client({ sub: "big" });
  t.after(() => sb.disconnect());
  const sub = sb.subscribe("chat:big");
  await sub.ready;
  const err = await rejection(sub.publish({ blob: "x".repeat(70_000) }));
  assert.equal(err.code, "too_large");
  assert.equal(sb.state, "connected");
  assert.ok((await sub.publish({ blob: "small" })).offset >= 1);
});

test("a second subscription to the same channel is refused synchronously", async (t) => {
  const { sb } = client();
  t.after(() => sb.disconnect());
  sb.subscribe("chat:dup");
  assert.throws(() => sb.subscribe("chat:dup"), (e) => e instanceof SwitchboardError && e.code === "already_subscribed");
});

test("commands while not connected reject at once with code offline", async (t) => {
  const { sb, rec } = client();
  t.after(() => sb.disconnect());
  sb.disconnect(); // stopped before ever connecting: subscribe does not connect
  const sub = sb.subscribe("chat:offline");
  assert.equal(sb.state, "stopped");

  const outcomes = [sub.publish({ text: "lost?" }), sub.presence(), sub.history(), sb.ping()].map((p) =>
    p.then(
      () => "resolved",
      (e) => e.code,
    ),
  );
  // Settled before any I/O could have happened: one turn of the event loop.
  const settled = await Promise.race([
    Promise.all(outcomes),
    new Promise((resolve) => setImmediate(() => resolve("still pending"))),
  ]);
  assert.deepEqual(settled, ["offline", "offline", "offline", "offline"]);

  // Once connected the same subscription works; while the node is down
  // publishes reject at once again.
  sb.connect();
  await sub.ready;
  await sub.publish({ text: "online" });
  const mark = rec.mark;
  const whileAway = new Promise((resolve) => {
    const off = sb.on("state", ({ state }) => {
      if (state !== "disconnected") return;
      off();
      resolve(sub.publish({ text: "while away" }).then(() => "resolved", (e) => e.code));
    });
  });
  await gw.restart();
  assert.equal(await whileAway, "offline");
  await rec.waitState("connected", { from: mark });
});
