// The runtime API matches the declarations in src/switchboard.d.ts (which
// test/types-check.ts exercises): every declared member exists.

import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { Switchboard, Subscription, SwitchboardError } from "../src/switchboard.js";
import { FakeSocket } from "./gateway.js";

test("every member declared in switchboard.d.ts exists at runtime", () => {
  const sb = new Switchboard("ws://gateway.test/ws", { getToken: () => "t", WebSocket: FakeSocket, pingInterval: 0 });
  sb.disconnect();
  const sub = sb.subscribe("chat:api");
  for (const name of ["connect", "disconnect", "subscribe", "publish", "presence", "history", "ping", "on", "off"]) {
    assert.equal(typeof sb[name], "function", `Switchboard#${name}`);
  }
  assert.equal(sb.state, "stopped");
  assert.deepEqual(Object.keys(sb.stats).sort(), ["connects", "duplicates", "messages", "paged", "reconnects", "staleReplies", "unknownFrames"]);
  assert.ok(sub instanceof Subscription);
  for (const name of ["publish", "presence", "history", "unsubscribe"]) {
    assert.equal(typeof sub[name], "function", `Subscription#${name}`);
  }
  assert.ok(sub.ready instanceof Promise);
  assert.equal(sub.state, "subscribing");
  assert.equal(sub.position, null);
  assert.equal(sub.channel, "chat:api");
  const err = new SwitchboardError("offline", "m", { status: 503, retryAfter: 2, closeCode: 1006 });
  assert.deepEqual([err.name, err.code, err.message, err.status, err.retryAfter, err.closeCode], ["SwitchboardError", "offline", "m", 503, 2, 1006]);

  // Each class and method of the declarations is named in the source.
  const declarations = readFileSync(new URL("../src/switchboard.d.ts", import.meta.url), "utf8");
  for (const name of ["connect", "disconnect", "subscribe", "publish", "presence", "history", "ping", "unsubscribe"]) {
    assert.match(declarations, new RegExp(`\\b${name}[<(]`), `${name} is declared`);
  }
});
