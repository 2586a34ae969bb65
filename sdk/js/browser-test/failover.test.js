// The node a page is on dies: the page shows it is reconnecting, lands on
// the other node through NGINX, and shows every message published while it
// was away, recovered from history in Redis.

import assert from "node:assert/strict";
import { readdir, readFile } from "node:fs/promises";
import { test } from "node:test";

import { CHANNEL, startChat } from "./cluster.js";
import { connected, eventually, say, snapshot, withHarness } from "./harness.js";

test("a page whose node dies reconnects to another node and recovers what it missed", { timeout: 120_000 }, (t) =>
  withHarness(t, async (h) => {
    const { alice, bob, aliceNode, bobNode } = await startChat(h);
    await say(alice, "before the crash");
    for (const page of [alice, bob]) {
      await eventually(async () => (await snapshot(page)).messages.some((m) => m.text === "before the crash"), {
        what: `${page.label} showing the first message`,
      });
    }
    const before = await snapshot(alice);
    const logBefore = before.log.length;

    // The crash, made deterministic: freeze alice's node (SIGSTOP), so it
    // neither delivers nor closes anything, publish through the surviving
    // node's server API, then kill the frozen node (SIGKILL). The messages
    // published during the freeze can only reach alice by recovery from
    // history after she reconnects elsewhere, whatever the timing.
    aliceNode.kill("SIGSTOP");
    // kill() only queues the signal: wait until every thread of the node has
    // stopped, or a busy machine lets it relay a message or two first.
    await eventually(() => allStopped(aliceNode.child.pid), { what: `${aliceNode.nodeId} stopped by SIGSTOP` });
    const frozen = ["missed 1", "missed 2", "missed 3"];
    for (const text of frozen) await bobNode.publish(CHANNEL, { user: "server", text });
    // bob, on the live node, gets them at once; alice cannot yet.
    await eventually(
      async () => {
        const texts = (await snapshot(bob)).messages.map((m) => m.text);
        return frozen.every((text) => texts.includes(text));
      },
      { what: "bob seeing the messages published during the freeze" },
    );
    const meanwhile = (await snapshot(alice)).messages.map((m) => m.text);
    assert.ok(
      frozen.every((text) => !meanwhile.includes(text)),
      `alice's frozen node delivered messages: ${meanwhile}`,
    );

    const exit = new Promise((resolve) => aliceNode.child.once("exit", resolve));
    aliceNode.kill("SIGKILL");
    await exit;
    // More while alice reconnects (or just after: either way she must get them).
    const during = ["after the crash 1", "after the crash 2"];
    for (const text of during) await bobNode.publish(CHANNEL, { user: "server", text });

    // She shows she lost the connection, then is back on the other node.
    const back = await eventually(
      async () => {
        const shown = await snapshot(alice);
        return shown.state === "connected" && shown.nodeId === bobNode.nodeId ? shown : false;
      },
      { timeout: 30_000, what: `alice connected again, on ${bobNode.nodeId}` },
    );
    const states = back.log.slice(logBefore).filter((e) => e.kind === "state").map((e) => e.state);
    assert.equal(states[0], "disconnected", `alice's page did not show that it lost the connection: ${states}`);
    assert.ok(states.includes("connecting"), `alice's page never showed that it was reconnecting: ${states}`);
    assert.equal(states.at(-1), "connected");

    // Every message, each once, in offset order, and recovery said so.
    const expected = ["before the crash", ...frozen, ...during];
    const shown = await eventually(
      async () => {
        const now = await snapshot(alice);
        return now.messages.length >= expected.length ? now : false;
      },
      { timeout: 15_000, what: "alice showing the messages published while she was away" },
    );
    assert.deepEqual(
      shown.messages.map((m) => m.text),
      expected,
      "alice shows every message once, in order",
    );
    const offsets = shown.messages.map((m) => m.offset);
    assert.ok(
      offsets.every((o, i) => i === 0 || o === offsets[i - 1] + 1),
      `alice's offsets are consecutive: ${offsets}`,
    );
    assert.deepEqual(offsets, (await snapshot(bob)).messages.map((m) => m.offset), "alice and bob agree on offsets");
    assert.equal(shown.recovery, "true", "alice's page says recovery succeeded");
    assert.equal(shown.notice, null, "no 'messages may be missing' notice after a recovered resume");

    // The chat goes on, and alice is listed again (her new connection) on
    // both pages; her old node's entry expires with its lease.
    await say(alice, "I'm back");
    await eventually(async () => (await snapshot(bob)).messages.some((m) => m.text === "I'm back"), {
      what: "bob seeing alice's message after her reconnect",
    });
    for (const page of [alice, bob]) {
      await eventually(
        async () => {
          const users = (await snapshot(page)).presence;
          return users.includes("alice") && users.includes("bob");
        },
        { what: `${page.label} listing alice and bob after the failover` },
      );
    }
    await connected(bob);
    assert.equal((await snapshot(bob)).nodeId, bobNode.nodeId, "bob stayed on his node");
  }),
);

/** Whether every thread of a process is stopped (state `T` in /proc). */
async function allStopped(pid) {
  const threads = await readdir(`/proc/${pid}/task`);
  const states = await Promise.all(
    threads.map(async (tid) => {
      const stat = await readFile(`/proc/${pid}/task/${tid}/stat`, "utf8");
      return stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3);
    }),
  );
  return states.every((state) => state === "T");
}
