// An operator's tour of the admin UI in Chromium, against two gateway nodes
// on a real Redis with the UI on: a wrong then the right key, both nodes,
// the channel a test client is in (searched and paged), the client in its
// presence, its message in the live tail, a message from the publish box
// reaching it, and a disconnect (with a close code and reason) that takes
// it out of presence. Takes the channel page's screenshot: into
// docs/admin.png with UPDATE_SCREENSHOT=1 (how the picture in
// docs/operations.md is made), else into a temp file, so a test run leaves
// the tree as it was.

import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { test } from "node:test";

import {
  ADMIN_ENV,
  eventually,
  eventuallyRows,
  logIn,
  openAdmin,
  REPO,
  rows,
  submitKey,
  text,
  unexpectedProblems,
  violations,
  withAdmin,
  WsClient,
} from "./fixtures.js";

const ROOM = "chat:admin-room";

test("an operator logs in, sees both nodes, follows a client through presence and the tail, publishes to it and disconnects it", { timeout: 180_000 }, (t) =>
  withAdmin(t, async (h) => {
    const redis = await h.redis();
    const gwA = await h.gateway({ nodeId: "gw-a", redis, env: ADMIN_ENV });
    const gwB = await h.gateway({ nodeId: "gw-b", redis, env: ADMIN_ENV });

    // The test client, on the node the admin page is NOT on: everything
    // the page shows about it comes through the cluster.
    const alice = new WsClient(gwB, "alice", { name: "Alice", role: "tester" });
    t.after(() => alice.close());
    await alice.ready();
    await alice.subscribe(ROOM);
    // Two more channels, so the search and the paging have something to do.
    const bob = new WsClient(gwA, "bob", { name: "Bob" });
    t.after(() => bob.close());
    await bob.ready();
    await bob.subscribe("chat:other");
    await bob.subscribe("chat:zzz");

    const browser = await h.browser();
    const page = await openAdmin(h, browser, gwA);

    // The page carries the contract's security headers.
    const headers = (await fetch(`${gwA.base}/admin/`)).headers;
    assert.match(headers.get("content-security-policy") ?? "", /script-src 'self'/);
    assert.equal(headers.get("x-frame-options"), "DENY");

    // ---- log in: a wrong key, then the right one ----
    await submitKey(page, "not-the-admin-key-at-all");
    await eventually(async () => (await text(page, "login-error")) === "wrong admin key", {
      what: "the server's message for a wrong key",
    });
    assert.equal(await page.getByTestId("nav").isVisible(), false, "still logged out");
    await logIn(page);

    // ---- nodes: both, with their figures (each node writes them to Redis every second) ----
    const counts = (r) => `${r.fields.connections}/${r.fields.subscriptions}`;
    const nodes = await eventuallyRows(
      page,
      "node-row",
      (found) => found.length === 2 && found.map(counts).join(" ") === "1/2 1/1",
      "gw-a (bob: 1 connection, 2 subscriptions) and gw-b (alice: 1, 1) on the nodes page",
    );
    assert.deepEqual(nodes.map((r) => r.nodeId), ["gw-a", "gw-b"]);
    assert.deepEqual(nodes.map((r) => r.thisNode), ["true", "false"], "gw-a is the node serving the page");
    assert.deepEqual(nodes.map((r) => r.draining), ["false", "false"]);
    for (const row of nodes) {
      for (const field of ["node_id", "version", "started_at", "uptime_s", "messages_in_per_s", "messages_out_per_s"]) {
        assert.ok(row.fields[field] && row.fields[field] !== "–", `the nodes table shows ${field}: ${JSON.stringify(row)}`);
      }
      assert.equal(row.fields.redis, "single, healthy", `both nodes on a healthy single Redis: ${JSON.stringify(row)}`);
      assert.equal(row.fields.draining, "serving");
    }
    assert.match(nodes[0].fields.node_id, /^gw-athis node$/);

    // ---- channels: search by prefix, page through the cursor ----
    await page.getByTestId("nav-channels").click();
    await page.getByTestId("channels-prefix").fill("chat:admin");
    await page.getByTestId("channels-search").click();
    const found = await eventuallyRows(page, "channel-row", (r) => r.length === 1 && r[0].channel === ROOM, `${ROOM} found by its prefix`);
    assert.deepEqual(found[0].fields, { subscribers: "1", users: "1" });

    await page.goto(`${gwA.base}/admin/#/channels?prefix=chat:&limit=2`);
    const first = await eventuallyRows(page, "channel-row", (r) => r.length === 2, "the first page of two");
    assert.deepEqual(first.map((r) => r.channel), [ROOM, "chat:other"]);
    assert.equal(await page.getByTestId("channels-prev").isDisabled(), true);
    await page.getByTestId("channels-next").click();
    const second = await eventuallyRows(page, "channel-row", (r) => r.length >= 1 && r[0].channel === "chat:zzz", "the second page");
    assert.deepEqual(second.map((r) => r.channel), ["chat:zzz"]);
    await page.getByTestId("channels-prev").click();
    await eventuallyRows(page, "channel-row", (r) => r.length === 2 && r[0].channel === ROOM, "back on the first page");

    // ---- the channel: alice in presence, with her info ----
    await page.locator(`[data-testid="channel-row"][data-channel="${ROOM}"] a`).click();
    await eventually(async () => (await text(page, "channel-name")) === ROOM, { what: "the channel page" });
    const presence = await eventuallyRows(page, "presence-row", (r) => r.some((m) => m.user === "alice"), "alice in presence");
    assert.equal(presence.length, 1);
    assert.equal(presence[0].connectionId, alice.welcome.connection_id);
    assert.equal(await text(page, "presence-info"), JSON.stringify({ name: "Alice", role: "tester" }));
    assert.equal(await text(page, "channel-subscribers"), "1");

    // ---- the live tail: alice's message, published on the other node ----
    await eventually(async () => (await page.getByTestId("tail-state").getAttribute("data-state")) === "live", {
      what: "the live tail open",
    });
    const sent = await alice.publish(ROOM, { text: "hello from alice", n: 1 });
    assert.ok(Number.isInteger(sent.offset), `the room keeps history: ${JSON.stringify(sent)}`);
    const tail = await eventuallyRows(page, "tail-row", (r) => r.length >= 1, "alice's message in the live tail");
    assert.equal(tail.length, 1);
    assert.equal(Number(tail[0].offset), sent.offset);
    assert.equal(await text(page, "tail-data"), JSON.stringify({ text: "hello from alice", n: 1 }));

    // The history window shows it too, with the epoch of the publish.
    await page.getByTestId("history-reload").click();
    await eventuallyRows(page, "history-row", (r) => r.some((m) => Number(m.offset) === sent.offset), "the message in history");
    assert.equal(await text(page, "history-epoch"), sent.epoch);
    assert.equal(await text(page, "history-offset"), String(sent.offset));

    // ---- the publish box: alice receives it ----
    // A message that is not JSON never leaves the page.
    await page.getByTestId("publish-data").fill("{not json");
    await page.getByTestId("publish-submit").click();
    await eventually(async () => ((await text(page, "publish-result")) ?? "").startsWith("Not JSON"), { what: "the JSON check" });

    await page.getByTestId("publish-data").fill('{"text": "hello from the admin", "ok": true}');
    await page.getByTestId("publish-submit").click();
    await eventually(async () => /^Published at offset \d+, epoch /.test((await text(page, "publish-result")) ?? ""), {
      what: "the publish acknowledged",
    });
    const received = await eventually(() => alice.messages(ROOM).find((m) => m.data?.text === "hello from the admin"), {
      what: "alice receiving the admin's message",
    });
    assert.deepEqual(received.data, { text: "hello from the admin", ok: true });
    assert.equal(received.offset, sent.offset + 1);
    assert.deepEqual(
      alice.messages(ROOM).map((m) => m.data.text),
      ["hello from alice", "hello from the admin"],
      "alice got her own message and the admin's, nothing else",
    );
    assert.equal(await text(page, "publish-result"), `Published at offset ${received.offset}, epoch ${sent.epoch}.`);
    await eventuallyRows(page, "tail-row", (r) => r.length === 2 && Number(r[0].offset) === received.offset, "the admin's message in the tail");
    await eventuallyRows(page, "history-row", (r) => r.length === 2, "both messages in history");

    // The screenshot for docs/operations.md: presence, the tail, publish, history.
    const shot = process.env.UPDATE_SCREENSHOT === "1"
        ? path.join(REPO, "docs/admin.png")
        : path.join(fs.mkdtempSync(path.join(os.tmpdir(), "sb-admin-")), "admin.png");
    await page.screenshot({ path: shot, fullPage: true });
    assert.ok(fs.statSync(shot).size > 10_000, `the screenshot is written to ${shot}`);

    // ---- the user's connections: disconnect with a code and a reason ----
    await page.getByTestId("presence-user").click();
    await eventually(async () => (await text(page, "user-id")) === "alice", { what: "alice's page" });
    const connections = await eventuallyRows(page, "connection-row", (r) => r.length === 1, "alice's connection");
    assert.equal(connections[0].nodeId, "gw-b");
    assert.equal(connections[0].connectionId, alice.welcome.connection_id);
    assert.equal(await text(page, "connection-channels"), ROOM);

    await page.getByTestId("disconnect-code").fill("4321");
    await page.getByTestId("disconnect-reason").fill("maintenance: please reconnect later");
    await page.getByTestId("disconnect-submit").click();
    assert.equal(alice.closed, null, "nothing happens before the confirmation");
    await page.getByTestId("disconnect-confirm").click();
    await eventually(() => alice.closed, { what: "alice's socket closed" });
    assert.deepEqual(alice.closed, { code: 4321, reason: "maintenance: please reconnect later" });
    await eventually(async () => (await text(page, "disconnect-result")) === "Disconnected with code 4321.", {
      what: "the disconnect acknowledged",
    });
    await eventually(async () => (await rows(page, "connection-row")).length === 0, { what: "alice's connections gone" });
    assert.equal(bob.closed, null, "bob is still connected");

    // ...and she is gone from the channel's presence.
    await page.goto(`${gwA.base}/admin/#/channel/${encodeURIComponent(ROOM)}`);
    await eventually(async () => (await text(page, "presence-note")) === "Nobody is here.", {
      what: "alice gone from presence",
    });
    assert.equal((await rows(page, "presence-row")).length, 0);

    assert.deepEqual(violations(page), [], "no CSP violation and no exception");
    assert.deepEqual(unexpectedProblems(page), [], "no other console errors");
    // The only refusals: the session probe before the login and the wrong key.
    assert.deepEqual(page.failed, ["401 /admin/api/session", "401 /admin/login"]);
    assert.deepEqual(page.dialogs, [], "no dialog");
  }),
);
