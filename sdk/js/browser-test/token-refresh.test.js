// A page whose token expires in a few seconds stays connected: the SDK asks
// the page's getToken for a fresh one before expiry (the demo fetches it
// from `#tokenUrl=`) and sends `refresh`, so the gateway never closes the
// session with 4001.

import assert from "node:assert/strict";
import { test } from "node:test";

import { connected, eventually, say, snapshot, token, withHarness } from "./harness.js";

const FIRST_TTL = 4; // seconds: the token in the page's URL
const FRESH_TTL = 6; // seconds: each token the endpoint hands out

test("a page with a short-lived token stays connected through refresh", { timeout: 90_000 }, (t) =>
  withHarness(t, async (h) => {
    // No leeway: the session is closed with 4001 right at `exp` unless refreshed.
    const node = await h.gateway({ nodeId: "gw-refresh", env: { SWITCHBOARD_JWT_LEEWAY: "0s" } });

    // The application's token endpoint, open to the page's origin (CORS).
    const issued = [];
    const endpoint = await h.httpServer((url) => {
      assert.equal(url.pathname, "/token");
      const fresh = token("carol", { ttl: FRESH_TTL });
      issued.push(fresh.exp);
      return fresh.jwt;
    });

    const first = token("carol", { ttl: FIRST_TTL });
    const tokenUrl = encodeURIComponent(`http://127.0.0.1:${endpoint.port}/token`);
    const browser = await h.browser();
    const page = await h.open(
      browser,
      `http://127.0.0.1:${node.port}/demo/#token=${first.jwt}&tokenUrl=${tokenUrl}`,
      "carol (short-lived token)",
    );
    const start = await connected(page);
    assert.equal(start.user, "carol");

    // Poll until well past the first token's expiry (and past the first
    // fresh token's, had only one refresh happened), or until the page shows
    // it lost the connection; it must stay on its first connection.
    const until = (first.exp + FRESH_TTL) * 1000 + 1_500;
    await eventually(
      async () => Date.now() > until || (await snapshot(page)).state !== "connected",
      { timeout: (FIRST_TTL + FRESH_TTL + 10) * 1000, interval: 200, what: "the tokens' expiry to pass" },
    );

    const after = await snapshot(page);
    const closed = node.events().filter((e) => e.message === "session closed");
    assert.deepEqual(closed, [], "the gateway closed no session (4001 would be an expired token)");
    assert.equal(after.connectionId, start.connectionId, "the page kept its connection");
    assert.deepEqual(
      after.log.filter((e) => e.kind === "state").map((e) => e.state),
      ["connecting", "connected"],
      "the page connected once and never dropped",
    );
    assert.equal(after.log.filter((e) => e.kind === "welcome").length, 1, "one welcome: no reconnect");
    assert.equal(after.error, null, "no error shown");
    assert.ok(issued.length >= 2, `the page fetched ${issued.length} fresh tokens; expected at least 2`);

    // The refreshed session still works.
    await say(page, "still here");
    await eventually(async () => (await snapshot(page)).messages.some((m) => m.text === "still here"), {
      what: "the message sent after the first token expired",
    });
    assert.deepEqual(page.problems, [], "the page logged no errors");
  }),
);
