// Reconnect after the node is killed and restarted on the same port.

import { test, after } from "node:test";
import assert from "node:assert/strict";
import { Switchboard } from "../src/switchboard.js";
import { startGateway, signToken, Recorder, Inbox } from "./gateway.js";

let gw;
after(() => gw?.stop());

test("after SIGKILL and a restart the client reconnects and resubscribes", async (t) => {
  gw = await startGateway();
  const sb = new Switchboard(gw.wsUrl, {
    getToken: async () => signToken({ sub: "survivor" }),
    backoff: { min: 20, max: 200 },
    pingInterval: 0,
  });
  t.after(() => sb.disconnect());
  const rec = new Recorder(sb);
  const messages = new Inbox();
  const recoveries = new Inbox();
  const sub = sb.subscribe("room:restart", { onMessage: messages.push, onRecover: recoveries.push });
  await sub.ready;
  assert.equal((await recoveries.next()).recovered, true);
  const firstWelcome = await rec.wait((e) => e.name === "welcome");
  assert.deepEqual(rec.states(), ["connecting", "connected"]);

  const mark = rec.mark;
  await gw.restart();
  const closed = await rec.waitState("disconnected", { from: mark });
  assert.equal(closed.code, 1006);
  await rec.waitState("connected", { from: mark });

  // connecting/disconnected may repeat while the node was down; the
  // sequence starts with the loss and ends connected.
  const states = rec.states().slice(2);
  assert.equal(states[0], "disconnected");
  assert.equal(states.at(-1), "connected");
  assert.ok(states.includes("connecting"));
  assert.ok(!states.includes("stopped"));
  for (let i = 1; i < states.length; i++) assert.notEqual(states[i], states[i - 1], `no repeated state in ${states}`);

  const secondWelcome = await rec.wait((e) => e.name === "welcome", { from: mark });
  assert.notEqual(secondWelcome.connection_id, firstWelcome.connection_id);
  assert.equal(sb.stats.reconnects, 1);

  // Resubscribed, and told that the restarted node (a new in-memory stream)
  // could not replay what it may have missed.
  assert.equal((await recoveries.next()).recovered, false);
  await sub.ready;
  assert.equal(sub.state, "subscribed");
  const sent = await gw.publish("room:restart", { n: 1 });
  const [data, context] = await messages.next();
  assert.deepEqual(data, { n: 1 });
  assert.equal(context.offset, sent.offset);
  assert.equal(rec.count("error"), 0);
});

test("a draining node (SIGTERM) closes with 1012 and the client comes back once a node is up", async (t) => {
  gw = gw ?? (await startGateway());
  const sb = new Switchboard(gw.wsUrl, {
    getToken: async () => signToken({ sub: "drained" }),
    backoff: { min: 20, max: 200 },
    pingInterval: 0,
  });
  t.after(() => sb.disconnect());
  const rec = new Recorder(sb);
  await sb.subscribe("room:drain").ready;
  const mark = rec.mark;
  await gw.kill("SIGTERM");
  const closed = await rec.waitState("disconnected", { from: mark });
  assert.deepEqual([closed.code, closed.reason], [1012, "node shutting down"]);
  await gw.start(gw.port);
  await rec.waitState("connected", { from: mark });
  assert.ok(!rec.states().includes("stopped"));
});
