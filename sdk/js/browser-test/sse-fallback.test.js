// A page behind a proxy that blocks WebSocket: the project's NGINX, with
// its /ws location refusing every upgrade (403) as some corporate proxies
// and hosting front-ends do, in front of two gateway nodes and Redis. The
// SDK in Chromium finds the upgrade refused, learns from the probe that the
// node would have taken it, falls back to server-sent events, receives and
// publishes through NGINX, and when its node dies under the stream it
// resumes on the other node with every message, in order, recovered.

import assert from "node:assert/strict";
import { readdir, readFile } from "node:fs/promises";
import { test } from "node:test";

import { API_KEY, connected, eventually, say, snapshot, token, withHarness } from "./harness.js";

const CHANNEL = "chat:lobby";

/** The shipped configuration with the upgrade refused on /ws (everything else as shipped). */
function refuseUpgrades(text) {
  const location = "location = /ws {";
  assert.ok(text.includes(location), `the nginx config has no \`${location}\``);
  return text.replace(
    location,
    `${location}\n            # The test's variant: a proxy that blocks WebSocket.\n            if ($http_upgrade != "") { return 403; }`,
  );
}

/** NGINX's access log, parsed (one JSON object a line). */
function accessLog(nginx) {
  return nginx
    .accessLog()
    .split("\n")
    .filter((line) => line.trim() !== "")
    .map((line) => JSON.parse(line));
}

test(
  "behind a proxy that refuses the WebSocket upgrade the page falls back to SSE, chats, and resumes on another node with nothing lost",
  { timeout: 120_000 },
  (t) =>
    withHarness(t, async (h) => {
      const redis = await h.redis();
      const gateways = [await h.gateway({ nodeId: "gw-a", redis }), await h.gateway({ nodeId: "gw-b", redis })];
      const nginx = await h.nginx(gateways, { edit: refuseUpgrades });
      const browser = await h.browser();
      const alice = await h.open(
        browser,
        `http://127.0.0.1:${nginx.port}/demo/#token=${token("alice").jwt}`,
        "alice @ http://127.0.0.1 (WebSocket blocked)",
      );

      // Connected, over SSE, after a refused upgrade and a probe that said
      // the node would have taken it.
      const first = await connected(alice);
      assert.equal(first.transport, "sse", "the page fell back to server-sent events");
      const states = first.log.filter((e) => e.kind === "state").map((e) => e.state);
      assert.deepEqual(states, ["connecting", "disconnected", "connecting", "connected"]);
      const log = await eventually(
        () => {
          const entries = accessLog(nginx);
          return entries.some((e) => e.uri === "/ws" && e.status === 204) ? entries : false;
        },
        { what: "the probe in NGINX's access log" },
      );
      assert.deepEqual(
        log.filter((e) => e.uri === "/ws").map((e) => e.status),
        [403, 204],
        "one refused upgrade, then the probe; no WebSocket attempt since",
      );
      const home = gateways.find((g) => g.nodeId === first.nodeId);
      const other = gateways.find((g) => g !== home);
      assert.ok(home && other, `the page shows a node id the gateways do not have: ${first.nodeId}`);

      // Receives (a server API publish) and publishes (POST /sse/command).
      await other.publish(CHANNEL, { user: "server", text: "hello from the backend" });
      await say(alice, "hello over sse");
      const chat = ["hello from the backend", "hello over sse"];
      await eventually(
        async () => {
          const texts = (await snapshot(alice)).messages.map((m) => m.text);
          return chat.every((text) => texts.includes(text));
        },
        { what: "alice showing the backend's message and her own" },
      );
      assert.ok(
        accessLog(nginx).some((e) => e.method === "POST" && e.uri === "/sse/command" && e.status === 200),
        "the publish went through NGINX as POST /sse/command",
      );
      const history = await fetch(`${home.base}/api/history/${encodeURIComponent(CHANNEL)}`, {
        headers: { authorization: `Bearer ${API_KEY}` },
      }).then((r) => r.json());
      assert.deepEqual(
        history.messages.map((m) => m.data.text),
        chat,
        "both messages are in the channel's history, in order",
      );
      const logBefore = (await snapshot(alice)).log.length;

      // The cut: freeze alice's node (SIGSTOP), so it neither delivers nor
      // closes anything, publish through the other node, then kill the
      // frozen one (SIGKILL): NGINX loses the upstream and ends the page's
      // stream without a close event. The messages published meanwhile can
      // only reach alice by recovery from history.
      home.kill("SIGSTOP");
      await eventually(() => allStopped(home.child.pid), { what: `${home.nodeId} stopped by SIGSTOP` });
      const frozen = ["missed 1", "missed 2", "missed 3"];
      for (const text of frozen) await other.publish(CHANNEL, { user: "server", text });
      const meanwhile = (await snapshot(alice)).messages.map((m) => m.text);
      assert.ok(
        frozen.every((text) => !meanwhile.includes(text)),
        `alice's frozen node delivered messages: ${meanwhile}`,
      );
      const exit = new Promise((resolve) => home.child.once("exit", resolve));
      home.kill("SIGKILL");
      await exit;
      const during = ["after the cut 1", "after the cut 2"];
      for (const text of during) await other.publish(CHANNEL, { user: "server", text });

      const back = await eventually(
        async () => {
          const shown = await snapshot(alice);
          return shown.state === "connected" && shown.nodeId === other.nodeId ? shown : false;
        },
        { timeout: 30_000, what: `alice connected again, on ${other.nodeId}` },
      );
      assert.equal(back.transport, "sse", "the reconnect kept the transport that worked");
      const after = back.log.slice(logBefore);
      const statesAfter = after.filter((e) => e.kind === "state").map((e) => e.state);
      assert.equal(statesAfter[0], "disconnected", `the page did not show that it lost the stream: ${statesAfter}`);
      assert.equal(statesAfter.at(-1), "connected");
      assert.deepEqual(
        after.filter((e) => e.kind === "welcome").map((e) => e.transport),
        ["sse"],
        "one new welcome, over SSE",
      );

      const expected = [...chat, ...frozen, ...during];
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
        "every message once, in order",
      );
      const offsets = shown.messages.map((m) => m.offset);
      assert.ok(
        offsets.every((o, i) => i === 0 || o === offsets[i - 1] + 1),
        `consecutive offsets: ${offsets}`,
      );
      assert.equal(shown.recovery, "true", "the page says the resume recovered everything (recovered: true)");
      assert.equal(shown.notice, null, "no 'messages may be missing' notice");

      // The chat goes on over the new stream.
      await say(alice, "I'm back");
      await eventually(async () => (await snapshot(alice)).messages.some((m) => m.text === "I'm back"), {
        what: "alice's message after the resume",
      });
      assert.deepEqual(
        accessLog(nginx)
          .filter((e) => e.uri === "/ws")
          .map((e) => e.status),
        [403, 204],
        "no WebSocket attempt after the fallback",
      );
      // Chromium itself reports the refused upgrade and the broken stream
      // on the console (the network's failures, which the test caused);
      // anything else (an exception, an error of the page) is a problem.
      const expectedNoise = [
        /^console\.error: WebSocket connection to 'ws:\/\/127\.0\.0\.1:\d+\/ws\?token=[^']*' failed: Error during WebSocket handshake: Unexpected response code: 403$/,
        /^console\.error: Failed to load resource: the server responded with a status of 403 \(Forbidden\)$/,
        /net::ERR_(INCOMPLETE_CHUNKED_ENCODING|EMPTY_RESPONSE|CONNECTION_RESET)/,
      ];
      assert.deepEqual(
        alice.problems.filter((p) => !expectedNoise.some((re) => re.test(p))),
        [],
        "no console errors or page exceptions beyond the network failures the test caused",
      );
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
