// Two browser pages on two gateway nodes behind NGINX chat with each other
// (also through the SDK's publishBatch), and both presence lists show both
// users. Writes the demo's screenshot to target/demo.png.

import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as path from "node:path";
import { test } from "node:test";

import { CHANNEL, startChat } from "./cluster.js";
import { eventually, REPO, say, snapshot, withHarness } from "./harness.js";

test("two pages on two nodes behind NGINX chat and see each other in presence", { timeout: 120_000 }, (t) =>
  withHarness(t, async (h) => {
    const { alice, bob, aliceNode, bobNode } = await startChat(h);

    // Presence: each page lists both users (initial presence() + join events).
    for (const page of [alice, bob]) {
      await eventually(
        async () => {
          const users = (await snapshot(page)).presence;
          return users.includes("alice") && users.includes("bob");
        },
        { what: `${page.label} listing alice and bob in presence` },
      );
    }

    await say(alice, "hello from alice");
    await eventually(async () => (await snapshot(bob)).messages.some((m) => m.text === "hello from alice"), {
      what: "bob seeing alice's message",
    });
    await say(bob, "hi alice, bob here");
    await eventually(async () => (await snapshot(alice)).messages.some((m) => m.text === "hi alice, bob here"), {
      what: "alice seeing bob's message",
    });

    // A server API publish on one node reaches both pages too.
    await aliceNode.publish(CHANNEL, { user: "server", text: "welcome to the lobby" });

    // Both pages show the same conversation, in the same offset order.
    const expected = [
      { user: "alice", text: "hello from alice" },
      { user: "bob", text: "hi alice, bob here" },
      { user: "server", text: "welcome to the lobby" },
    ];
    const shown = {};
    for (const page of [alice, bob]) {
      shown[page.label] = await eventually(
        async () => {
          const { messages } = await snapshot(page);
          return messages.length === expected.length ? messages : false;
        },
        { what: `${page.label} showing three messages` },
      );
      assert.deepEqual(
        shown[page.label].map(({ user, text }) => ({ user, text })),
        expected,
        `${page.label} shows the conversation`,
      );
      const offsets = shown[page.label].map((m) => m.offset);
      assert.ok(
        offsets.every((o, i) => Number.isInteger(o) && (i === 0 || o === offsets[i - 1] + 1)),
        `${page.label} shows consecutive offsets: ${offsets}`,
      );
    }
    assert.deepEqual(shown[alice.label], shown[bob.label], "both pages show the same offsets");

    // publishBatch in the browser: two messages from alice's page, one
    // result each, and both reach bob's page on the other node.
    const results = await alice.evaluate(() =>
      window.demo.sb.publishBatch([
        { channel: window.demo.channel, data: { user: "alice", text: "batch one" } },
        { channel: window.demo.channel, data: { user: "alice", text: "batch two" } },
      ]),
    );
    const last = shown[alice.label].at(-1).offset;
    assert.deepEqual(
      results.map((r) => r.offset).sort((x, y) => x - y),
      [last + 1, last + 2],
      `the batch's offsets: ${JSON.stringify(results)}`,
    );
    await eventually(
      async () => {
        const texts = (await snapshot(bob)).messages.map((m) => m.text);
        return texts.includes("batch one") && texts.includes("batch two");
      },
      { what: "bob seeing alice's batch" },
    );

    // Nothing went wrong on the way.
    for (const page of [alice, bob]) {
      const { error, state, notice } = await snapshot(page);
      assert.equal(error, null, `${page.label} shows no error`);
      assert.equal(notice, null, `${page.label} shows no recovery notice`);
      assert.equal(state, "connected");
      assert.deepEqual(page.problems, [], `${page.label} logged no errors`);
    }
    assert.notEqual(aliceNode.nodeId, bobNode.nodeId);

    const target = path.join(REPO, "target");
    fs.mkdirSync(target, { recursive: true });
    await alice.getByTestId("input").fill("typing…");
    await alice.screenshot({ path: path.join(target, "demo.png") });
    assert.ok(fs.statSync(path.join(target, "demo.png")).size > 10_000, "target/demo.png is written");
  }),
);
