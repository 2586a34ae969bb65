// publishBatch() against a real gateway: one result per message in list
// order, each bad message with its own SwitchboardError, the good ones
// delivered, and a batch refused as a whole rejects.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { Switchboard, SwitchboardError } from "../src/switchboard.js";
import { startGateway, signToken, Inbox } from "./gateway.js";

let gw;
before(async () => {
  gw = await startGateway({ env: { SWITCHBOARD_MSG_RATE: "1", SWITCHBOARD_MSG_BURST: "10" } });
});
after(() => gw?.stop());

function client(claims = {}) {
  return new Switchboard(gw.wsUrl, { getToken: async () => signToken(claims), pingInterval: 0 });
}

async function rejection(promise) {
  try {
    await promise;
  } catch (err) {
    return err;
  }
  assert.fail("expected the promise to reject");
}

test("publishBatch resolves with each message's position or its own error", async (t) => {
  const reader = client({ sub: "reader" });
  t.after(() => reader.disconnect());
  const messages = new Inbox();
  const sub = reader.subscribe("chat:batch", { onMessage: (data, context) => messages.push([data, context.offset]) });
  const ready = await sub.ready;

  const writer = client({ sub: "writer", publish: ["chat:*"] });
  t.after(() => writer.disconnect());
  await writer.subscribe("chat:other").ready; // connected
  const results = await writer.publishBatch([
    { channel: "chat:batch", data: { n: 1 } },
    { channel: "secret:x", data: 2 },
    { channel: "chat:*", data: 3 },
    { channel: "chat:batch" },
    { channel: "chat:batch", data: { n: 2 } },
  ]);
  assert.equal(results.length, 5);
  assert.deepEqual(results[0], { offset: ready.offset + 1, epoch: ready.epoch });
  const errors = results.slice(1, 4);
  assert.ok(errors.every((e) => e instanceof SwitchboardError), "bad messages get errors");
  assert.deepEqual(
    errors.map((e) => [e.code, e.message]),
    [
      ["forbidden", "token does not grant publishing to secret:x"],
      ["bad_request", "invalid channel: '*' may only end a pattern"],
      ["bad_request", "missing field data"],
    ],
  );
  assert.deepEqual(results[4], { offset: ready.offset + 2, epoch: ready.epoch });

  assert.deepEqual(await messages.next(), [{ n: 1 }, ready.offset + 1]);
  assert.deepEqual(await messages.next(), [{ n: 2 }, ready.offset + 2]);
});

test("messages past the rate get rate_limited in their place", async (t) => {
  const writer = client({ sub: "eager" });
  t.after(() => writer.disconnect());
  const sub = writer.subscribe("chat:rate");
  await sub.ready;
  // The subscribe took one token of 10 and the batch frame one more.
  const batch = Array.from({ length: 12 }, (_, n) => ({ channel: "chat:rate", data: n }));
  const results = await writer.publishBatch(batch);
  const codes = results.map((r) => (r instanceof SwitchboardError ? r.code : "ok"));
  assert.deepEqual(codes, [...Array(9).fill("ok"), ...Array(3).fill("rate_limited")]);
  assert.equal(results[11].message, "message rate limit of 1/s exceeded; message not published");
});

test("a batch refused as a whole rejects", async (t) => {
  const writer = client({ sub: "writer" });
  t.after(() => writer.disconnect());
  await writer.subscribe("chat:whole").ready;
  for (const bad of [[], Array(1001).fill({ channel: "chat:a", data: 1 }), "not a list"]) {
    const err = await rejection(writer.publishBatch(bad));
    assert.ok(err instanceof SwitchboardError);
    assert.deepEqual([err.code, err.message], ["bad_request", "messages must hold 1 to 1000 messages"]);
  }
  // Not connected: rejected before sending, like any command.
  const offline = client({ sub: "offline" });
  const err = await rejection(offline.publishBatch([{ channel: "chat:a", data: 1 }]));
  assert.equal(err.code, "offline");
});
