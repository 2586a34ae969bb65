// The nodes page: every live node of the cluster (read through Redis by the
// node serving this page; just this node when it runs alone), refreshed
// every 2 seconds.

import * as api from "../api.js";
import { duration, h, rate, replace, status, when } from "../dom.js";
import { poll } from "../poll.js";

const COLUMNS = [
  ["node_id", "Node"],
  ["version", "Version"],
  ["started_at", "Started"],
  ["uptime_s", "Uptime"],
  ["connections", "Connections"],
  ["subscriptions", "Subscriptions"],
  ["messages_in_per_s", "In/s"],
  ["messages_out_per_s", "Out/s"],
  ["redis", "Redis"],
  ["draining", "State"],
];

function cell(node, field) {
  switch (field) {
    case "node_id":
      return [h("span", { class: "mono" }, node.node_id), node.this_node ? h("span", { class: "tag", testid: "this-node" }, "this node") : null];
    case "started_at":
      return when(node.started_at);
    case "uptime_s":
      return duration(node.uptime_s);
    case "messages_in_per_s":
    case "messages_out_per_s":
      return rate(node[field]);
    case "redis": {
      const redis = node.redis || {};
      const healthy = redis.mode === "none" || redis.healthy;
      return h(
        "span",
        { class: `pill ${healthy ? "ok" : "bad"}`, dataset: { mode: redis.mode, healthy: String(!!redis.healthy) } },
        redis.mode === "none" ? "none (embedded)" : `${redis.mode}, ${redis.healthy ? "healthy" : "unhealthy"}`,
      );
    }
    case "draining":
      return h("span", { class: `pill ${node.draining ? "warn" : "ok"}` }, node.draining ? "draining" : "serving");
    default:
      return String(node[field] ?? "–");
  }
}

export function mount(view) {
  const body = h("tbody", { testid: "nodes" });
  const note = h("p", { testid: "error", role: "alert", hidden: true });
  const updated = h("span", { class: "muted", testid: "nodes-updated" }, "loading…");
  const count = h("span", { class: "count", testid: "nodes-count" }, "–");
  view.replaceChildren(
    h(
      "section",
      { class: "card" },
      h("div", { class: "card-head" }, h("h2", {}, "Nodes ", count), updated),
      note,
      h(
        "div",
        { class: "scroll" },
        h("table", {}, h("thead", {}, h("tr", {}, COLUMNS.map(([, label]) => h("th", {}, label)))), body),
      ),
    ),
  );

  return poll(2000, async () => {
    try {
      const { nodes } = await api.nodes();
      const sorted = [...nodes].sort((a, b) => (a.node_id < b.node_id ? -1 : a.node_id > b.node_id ? 1 : 0));
      replace(
        body,
        sorted.map((node) =>
          h(
            "tr",
            {
              testid: "node-row",
              dataset: { nodeId: node.node_id, draining: String(!!node.draining), thisNode: String(!!node.this_node) },
              class: node.this_node ? "this" : null,
            },
            COLUMNS.map(([field]) => h("td", { dataset: { field } }, cell(node, field))),
          ),
        ),
        sorted.length ? null : h("tr", {}, h("td", { colspan: COLUMNS.length, class: "muted" }, "No nodes.")),
      );
      count.textContent = String(sorted.length);
      updated.textContent = `updated ${new Date().toLocaleTimeString()}`;
      status(note);
    } catch (err) {
      if (err.status !== 401) status(note, "error", `Could not load the nodes: ${err.message}`);
    }
  });
}
