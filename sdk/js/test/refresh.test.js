// Token refresh before expiry: against a real gateway (leeway 0 s, so it
// closes with 4001 exactly at `exp`), and the schedule with a fake socket.

import { test, after, beforeEach } from "node:test";
import assert from "node:assert/strict";
import { Switchboard } from "../src/switchboard.js";
import { startGateway, signToken, Recorder, Inbox, TestClock, FakeSocket, withTimeout, until } from "./gateway.js";

let gw;
after(() => gw?.stop());
beforeEach(() => FakeSocket.reset());

test("a session outlives its first token: refresh at 80% of expires_in, no 4001", async (t) => {
  gw = await startGateway({ env: { SWITCHBOARD_JWT_LEEWAY: "0s" } });
  const firstExp = Math.floor(Date.now() / 1000) + 3;
  const calls = new Inbox();
  let call = 0;
  const sb = new Switchboard(gw.wsUrl, {
    getToken: async () => {
      call += 1;
      calls.push({ call, at: Date.now() });
      const exp = call === 1 ? firstExp : Math.floor(Date.now() / 1000) + 3600;
      return signToken({ sub: "refresher", exp });
    },
    pingInterval: 0,
  });
  t.after(() => sb.disconnect());
  const rec = new Recorder(sb);
  const messages = new Inbox();
  const sub = sb.subscribe("chat:refresh", { onMessage: messages.push });
  await sub.ready;
  const welcome = await rec.wait((e) => e.name === "welcome");
  assert.ok(welcome.expires_in <= 3, `expires_in ${welcome.expires_in}`);

  await calls.next(); // the connect
  const second = await calls.next(5_000, "getToken for the refresh");
  assert.ok(second.at < firstExp * 1000, "the refresh starts before the first token expires");

  // Past the first token's expiry (with a margin for the node's whole-second
  // timer), the same connection still works.
  const deadline = firstExp * 1000 + 1_000;
  await withTimeout(new Promise((resolve) => setTimeout(resolve, Math.max(0, deadline - Date.now()))), 6_000, "the expiry");
  assert.equal(sb.state, "connected");
  await sb.ping();
  await gw.publish("chat:refresh", { after: "expiry" });
  assert.deepEqual((await messages.next())[0], { after: "expiry" });
  assert.equal(sb.stats.connects, 1, "never reconnected");
  assert.deepEqual(rec.states(), ["connecting", "connected"], "no disconnect, no 4001");
  assert.equal(rec.count("error"), 0);
  assert.equal(call, 2);
});

test("refresh is scheduled at 80% of each expires_in and retried with backoff on failure", async () => {
  const clock = new TestClock({ randoms: [0.5, 0.5] });
  let tokens = 0;
  const sb = new Switchboard("ws://gateway.test/ws", {
    getToken: async () => `token-${++tokens}`,
    backoff: { min: 100, max: 1000 },
    requestTimeout: 1e9,
    pingInterval: 0,
    WebSocket: FakeSocket,
    clock,
  });
  const rec = new Recorder(sb);
  sb.connect();
  await rec.waitState("connecting");
  await until(() => FakeSocket.instances.length === 1);
  const socket = FakeSocket.last();
  socket.accept({ expires_in: 100 });
  const held = () => [...clock.held.values()].map((timer) => timer.ms).filter((ms) => ms < 1e9);

  assert.deepEqual(held(), [80_000]);
  clock.advance(80_000);
  fire(clock, 80_000);
  await until(() => socket.sent.some((f) => f.type === "refresh"));
  const refresh = socket.sent.at(-1);
  assert.equal(refresh.token, "token-2");
  socket.reply({ expires_in: 50 });
  await until(() => held().length === 1);
  assert.deepEqual(held(), [40_000]);

  // A refused refresh: error event, retry after a backoff delay, new token.
  clock.advance(40_000);
  fire(clock, 40_000);
  await until(() => socket.sent.at(-1).type === "refresh" && socket.sent.at(-1).token === "token-3");
  socket.reply(undefined, { code: "token_expired", message: "token has expired" });
  const error = await rec.wait((e) => e.name === "error");
  assert.equal(error.code, "token_expired");
  await until(() => held().length === 1);
  assert.deepEqual(held(), [0.5 * 100]);
  fire(clock, 50);
  await until(() => socket.sent.at(-1).token === "token-4");

  // A token that does not extend the session is a failure too (else the
  // next refresh would be due at once, in a loop).
  socket.reply({ expires_in: 1 });
  const notLater = await rec.wait((e) => e.name === "error" && e.payload.code === "bad_token");
  assert.match(notLater.message, /expires no later/);
  await until(() => held().length === 1);
  assert.ok(held()[0] <= 200, `a backoff delay, not an immediate refresh: ${held()}`);
  assert.equal(sb.state, "connected");
  sb.disconnect();
});

function fire(clock, ms) {
  for (const [handle, timer] of clock.held) {
    if (timer.ms === ms) {
      clock.held.delete(handle);
      timer.fn();
      return;
    }
  }
  assert.fail(`no held timer of ${ms} ms`);
}
