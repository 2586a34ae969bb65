// Two demo pages on two gateway nodes behind the project's NGINX: the setup
// shared by the cluster tests (chat across nodes, a node stopped under a
// page).

import assert from "node:assert/strict";

import { connected, token } from "./harness.js";

export const CHANNEL = "chat:lobby";

/**
 * Redis, gateways gw-a and gw-b, NGINX on 127.0.0.1:P and [::1]:P, and two
 * pages of the demo loaded through NGINX: alice from http://127.0.0.1:P and
 * bob from http://[::1]:P, each connected to a different node.
 *
 * NGINX's upstream uses `ip_hash`, and Chromium's connections to a loopback
 * address all come from that address, so two pages opened on 127.0.0.1
 * would always share a node. ip_hash hashes the first three octets of an
 * IPv4 client and all 16 bytes of an IPv6 one, and picks the upstream at
 * index `hash % 2`: in NGINX's hash 127.0.0.x gives 4040 (index 0) and ::1
 * gives 5945 (index 1), so the two pages land on different nodes.
 *
 * Should a future NGINX hash them onto one node, listing the servers in the
 * other order would not help (both would still share an index), so the one
 * retry marks the node both landed on `down` in the rendered configuration
 * and reloads NGINX: alice keeps her open connection (the old worker serves
 * it until it closes), and bob, reloaded, is re-hashed onto the other node.
 */
export async function startChat(h) {
  const redis = await h.redis();
  const gateways = [await h.gateway({ nodeId: "gw-a", redis }), await h.gateway({ nodeId: "gw-b", redis })];
  const nginx = await h.nginx(gateways, { ipv6: true });
  const browser = await h.browser();

  const alice = await h.open(
    browser,
    `http://127.0.0.1:${nginx.port}/demo/#token=${token("alice").jwt}`,
    "alice @ http://127.0.0.1",
  );
  const bob = await h.open(browser, `http://[::1]:${nginx.port}/demo/#token=${token("bob").jwt}`, "bob @ http://[::1]");
  const a = await connected(alice);
  let b = await connected(bob);

  if (a.nodeId === b.nodeId) {
    const shared = gateways.find((g) => g.nodeId === a.nodeId);
    await nginx.reload((text) => {
      const line = `server ${shared.addr} `;
      assert.ok(text.includes(line), `the nginx config has no \`${line}\``);
      return text.replace(line, `server ${shared.addr} down `);
    });
    await bob.reload();
    b = await connected(bob);
  }
  assert.notEqual(a.nodeId, b.nodeId, "the two pages should be on two different gateway nodes");
  assert.deepEqual(
    new Set([a.nodeId, b.nodeId]),
    new Set(gateways.map((g) => g.nodeId)),
    "the pages show node ids the gateways do not have",
  );

  const nodeOf = (shown) => gateways.find((g) => g.nodeId === shown.nodeId);
  return { redis, gateways, nginx, browser, alice, bob, aliceNode: nodeOf(a), bobNode: nodeOf(b) };
}
