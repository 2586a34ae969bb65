// Batched frames against a real gateway: the SDK asks for them by default,
// splits a frame of several messages into single messages in order, and a
// client with `batch: false` gets one message per frame.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { Switchboard } from "../src/switchboard.js";
import { startGateway, signToken, Inbox } from "./gateway.js";

let gw;
before(async () => {
  // A long coalescing window, so a burst surely shares one frame.
  gw = await startGateway({ env: { SWITCHBOARD_WRITE_COALESCE: "1s" } });
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
    const channel = `news:batch-${batch}`;
    const sub = sb.subscribe(channel, { onMessage: messages.push });
    await sub.ready;
    assert.equal(new URL(urls[0]).searchParams.get("batch"), batch ? "1" : null);

    await burstTo(channel, 10);
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
