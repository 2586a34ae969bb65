// A user's connections, cluster-wide: the node each one is on and the
// channels it is subscribed to, refreshed every 2 seconds, and a button
// that disconnects all of them with a close code (4000-4999) and reason.

import * as api from "../api.js";
import { h, link, replace, status } from "../dom.js";
import { poll } from "../poll.js";

const DEFAULT_CODE = 4003;
const DEFAULT_REASON = "disconnected by the server";
const MAX_REASON_BYTES = 123;

export function mount(view, { id }) {
  const note = h("p", { testid: "error", role: "alert", hidden: true });
  const count = h("span", { class: "count", testid: "connections-count" }, "–");
  const body = h("tbody", { testid: "connections" });
  const empty = h("p", { class: "muted", testid: "connections-empty", hidden: true }, "No connections.");

  const code = h("input", {
    type: "number",
    name: "code",
    min: "4000",
    max: "4999",
    step: "1",
    required: true,
    value: String(DEFAULT_CODE),
    "aria-label": "close code",
    testid: "disconnect-code",
  });
  const reason = h("input", {
    type: "text",
    name: "reason",
    value: DEFAULT_REASON,
    maxlength: String(MAX_REASON_BYTES),
    "aria-label": "close reason",
    testid: "disconnect-reason",
  });
  const submit = h("button", { type: "submit", class: "danger", testid: "disconnect-submit" }, "Disconnect…");
  const confirm = h("button", { type: "button", class: "danger", testid: "disconnect-confirm", hidden: true }, "Yes, disconnect");
  const cancel = h("button", { type: "button", testid: "disconnect-cancel", hidden: true }, "Cancel");
  const result = h("p", { testid: "disconnect-result", role: "status", hidden: true });
  const form = h(
    "form",
    { class: "toolbar", testid: "disconnect-form" },
    h("label", {}, "Code ", code),
    h("label", { class: "grow" }, "Reason ", reason),
    submit,
    confirm,
    cancel,
  );

  view.replaceChildren(
    h(
      "div",
      { class: "page-head" },
      h("p", { class: "crumbs" }, "User"),
      h("h1", { class: "mono", testid: "user-id" }, id),
    ),
    note,
    h(
      "section",
      { class: "card" },
      h("div", { class: "card-head" }, h("h2", {}, "Connections ", count)),
      empty,
      h("table", {}, h("thead", {}, h("tr", {}, h("th", {}, "Connection"), h("th", {}, "Node"), h("th", {}, "Channels"))), body),
    ),
    h(
      "section",
      { class: "card" },
      h("div", { class: "card-head" }, h("h2", {}, "Disconnect")),
      h("p", { class: "muted" }, "Closes every connection of this user, on every node. Clients may reconnect unless their token is revoked."),
      form,
      result,
    ),
  );

  let alive = true;
  async function refresh() {
    try {
      const answer = await api.user(id);
      if (!alive) return;
      const connections = [...(answer.connections || [])].sort((a, b) => (a.connection_id < b.connection_id ? -1 : 1));
      count.textContent = String(connections.length);
      empty.hidden = connections.length > 0;
      replace(
        body,
        connections.map((c) =>
          h(
            "tr",
            { testid: "connection-row", dataset: { connectionId: c.connection_id, nodeId: c.node_id } },
            h("td", { class: "mono" }, c.connection_id),
            h("td", { class: "mono", testid: "connection-node" }, c.node_id),
            h(
              "td",
              { testid: "connection-channels" },
              (c.channels || []).length
                ? h("ul", { class: "inline" }, c.channels.map((name) => h("li", {}, link("channel", name, name, { class: "mono" }))))
                : h("span", { class: "muted" }, "none"),
            ),
          ),
        ),
      );
      status(note);
    } catch (err) {
      if (alive && err.status !== 401) status(note, "error", err.message);
    }
  }
  const stopPolling = poll(2000, refresh);

  const asking = (yes) => {
    submit.hidden = yes;
    confirm.hidden = cancel.hidden = !yes;
    code.disabled = reason.disabled = yes;
  };
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const n = Number(code.value);
    if (!Number.isInteger(n) || n < 4000 || n > 4999) {
      status(result, "error", "The code must be a whole number from 4000 to 4999.");
      return;
    }
    if (new TextEncoder().encode(reason.value).length > MAX_REASON_BYTES) {
      status(result, "error", `The reason must be at most ${MAX_REASON_BYTES} bytes.`);
      return;
    }
    status(result);
    asking(true);
    confirm.focus();
  });
  cancel.addEventListener("click", () => asking(false));
  confirm.addEventListener("click", async () => {
    confirm.disabled = true;
    try {
      await api.disconnect(id, Number(code.value), reason.value);
      if (!alive) return;
      status(result, "ok", `Disconnected with code ${code.value}.`);
      refresh();
    } catch (err) {
      if (alive && err.status !== 401) status(result, "error", err.message);
    } finally {
      confirm.disabled = false;
      asking(false);
    }
  });

  return () => {
    alive = false;
    stopPolling();
  };
}
