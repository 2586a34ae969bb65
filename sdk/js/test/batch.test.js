// Batched frames against a real gateway: the SDK asks for them by default,
// splits a frame of several messages into single messages in order, and a
// client with `batch: false` gets one message per frame.
//
// Frames are written together only when they wait together: a live burst
// published one request at a time reaches a subscriber a frame at a time,
// and adaptive write coalescing writes each at once (it holds frames only
// once a connection falls behind). So the burst is published while the
// client is away: on reconnect the subscribe's reply and the ten recovered
// messages go out in one write, which a batch client gets as one frame.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { Switchboard } from "../src/switchboard.js";
import { startGateway, signToken, Inbox } from "./gateway.js";

let gw;
before(async () => {
  gw = await startGateway();
});
after(() => gw?.stop());

/** The global WebSocket, recording every text frame it receives. */
function recordingWebSocket(frames) {
  return class extends globalThis.WebSocket {
    constructor(url) {
      super(url);
      this.url_ = url;
      this.addEventListener("message", (ev) => frames.push(ev.data));
    }
  };
}

async function burstTo(channel, n) {
  for (let k = 0; k < n; k += 1) await gw.publish(channel, { k });
}

for (const batch of [true, false]) {
  test(`a client with batch: ${batch} gets every message once, in order`, async (t) => {
    const frames = [];
    const urls = [];
    const Recording = recordingWebSocket(frames);
    const sb = new Switchboard(gw.wsUrl, {
      getToken: async () => signToken({ sub: `reader-${batch}` }),
      pingInterval: 0,
      batch,
      WebSocket: class extends Recording {
        constructor(url) {
          urls.push(url);
          super(url);
        }
      },
    });
    t.after(() => sb.disconnect());
    const messages = new Inbox();
    // A namespace with history, so the reconnect recovers the burst.
    const channel = `chat:batch-${batch}`;
    const sub = sb.subscribe(channel, { onMessage: messages.push });
    await sub.ready;
    assert.equal(new URL(urls[0]).searchParams.get("batch"), batch ? "1" : null);

    sb.disconnect();
    await burstTo(channel, 10);
    sb.connect();
    for (let k = 0; k < 10; k += 1) {
      const [data] = await messages.next();
      assert.deepEqual(data, { k });
    }
    const welcome = JSON.parse(frames[0]);
    assert.equal(welcome.type, "welcome");
    assert.equal(welcome.batch, batch ? true : undefined);
    const multi = frames.filter((f) => f.includes("\n"));
    if (batch) {
      assert.ok(multi.length >= 1, `no frame carried several messages: ${frames.length} frames`);
    } else {
      assert.equal(multi.length, 0, "a client that did not ask got a batched frame");
    }
    // Commands still work after batched frames.
    assert.equal(typeof (await sb.ping()), "number");
  });
}
