// A page from an origin the gateway does not allow is refused, and the page
// says why: the browser hides the handshake's 403, so the SDK asks the
// gateway's /ws?probe=1 route, gets `forbidden_origin`, and stops instead of
// retrying.

import assert from "node:assert/strict";
import { test } from "node:test";

import { eventually, snapshot, token, withHarness } from "./harness.js";

test("a page from an origin that is not allowed is refused and shows why", { timeout: 90_000 }, (t) =>
  withHarness(t, async (h) => {
    // The page is served by this node at http://127.0.0.1:<port>, which is
    // not the one allowed origin.
    const node = await h.gateway({
      nodeId: "gw-origin",
      env: { SWITCHBOARD_ALLOWED_ORIGINS: "http://allowed.example" },
    });
    const browser = await h.browser();
    const page = await h.open(
      browser,
      `http://127.0.0.1:${node.port}/demo/#token=${token("mallory").jwt}`,
      "mallory @ a foreign origin",
    );

    const shown = await eventually(
      async () => {
        const now = await snapshot(page);
        return now.state === "stopped" && now.error ? now : false;
      },
      { what: "the page stopped, showing an error" },
    );
    assert.equal(shown.error.code, "forbidden_origin", `the page shows ${JSON.stringify(shown.error)}`);
    assert.match(shown.error.text, /origin is not allowed/, "the page shows the gateway's message");
    assert.match(shown.error.text, /allowed_origins/, "the page says what to change");
    assert.ok(
      !shown.log.some((e) => e.kind === "state" && e.state === "connected"),
      "the page never connected",
    );
    assert.equal(shown.nodeId, "–", "no welcome arrived");
    assert.equal(await page.getByTestId("send").isDisabled(), true, "sending is disabled");

    // The gateway refused the handshake for the origin, and the SDK gave up
    // at once instead of retrying (a stopped page opens no more sockets).
    const refusals = node.events().filter((e) => e.message === "handshake refused" && e.reason === "origin");
    assert.ok(refusals.length >= 1, "the gateway logged the refused origin");
    assert.ok(refusals.length <= 2, `the page tried ${refusals.length} times against a forbidden origin`);
  }),
);
