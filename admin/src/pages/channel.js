// One channel: its counts and presence (with each connection's `info`),
// refreshed every 2 seconds; its history window (epoch, latest offset and
// the messages kept); a live tail of what is published from now on, read
// from `GET /admin/api/tail` (an EventSource: the node's hub feeds it, it is
// not a member of the channel); and a publish box that goes through the
// same path as `POST /api/publish`.

import * as api from "../api.js";
import { h, json, link, prettyJson, replace, status } from "../dom.js";
import { poll } from "../poll.js";

const MAX_TAIL = 200;

export function mount(view, { id: name }, { recheck }) {
  const note = h("p", { testid: "error", role: "alert", hidden: true });
  const subscribers = h("dd", { testid: "channel-subscribers" }, "–");
  const users = h("dd", { testid: "channel-users" }, "–");
  const presenceBody = h("tbody", { testid: "presence" });
  const presenceNote = h("p", { class: "muted", testid: "presence-note", hidden: true });
  const presenceCount = h("span", { class: "count", testid: "presence-count" }, "–");

  const historyEpoch = h("dd", { class: "mono", testid: "history-epoch" }, "–");
  const historyOffset = h("dd", { class: "mono", testid: "history-offset" }, "–");
  const historyBody = h("tbody", { testid: "history" });
  const historyNote = h("p", { class: "muted", testid: "history-note", hidden: true });
  const historyReload = h("button", { type: "button", testid: "history-reload" }, "Reload");

  const tailState = h("span", { class: "pill", testid: "tail-state", dataset: { state: "connecting" } }, "connecting");
  const tailList = h("ol", { class: "tail", testid: "tail" });
  const tailEmpty = h("p", { class: "muted", testid: "tail-empty" }, "Waiting for messages…");
  const tailPause = h("button", { type: "button", testid: "tail-pause" }, "Pause");
  const tailClear = h("button", { type: "button", testid: "tail-clear" }, "Clear");

  const publishData = h("textarea", {
    name: "data",
    rows: 4,
    spellcheck: "false",
    "aria-label": "message data (JSON)",
    testid: "publish-data",
  });
  publishData.value = '{"text": "hello from the admin UI"}';
  const publishSubmit = h("button", { type: "submit", class: "primary", testid: "publish-submit" }, "Publish");
  const publishResult = h("p", { testid: "publish-result", role: "status", hidden: true });
  const publishForm = h(
    "form",
    { class: "publish", testid: "publish-form" },
    h("label", {}, "Data (JSON)", publishData),
    h("div", { class: "row" }, publishSubmit, publishResult),
  );

  view.replaceChildren(
    h(
      "div",
      { class: "page-head" },
      h("p", { class: "crumbs" }, h("a", { href: "#/channels" }, "Channels"), " / "),
      h("h1", { class: "mono", testid: "channel-name" }, name),
      h("dl", { class: "facts" }, h("div", {}, h("dt", {}, "subscribers"), subscribers), h("div", {}, h("dt", {}, "users"), users)),
    ),
    note,
    h(
      "div",
      { class: "grid" },
      h(
        "section",
        { class: "card", testid: "presence-card" },
        h("div", { class: "card-head" }, h("h2", {}, "Presence ", presenceCount)),
        presenceNote,
        h("table", {}, h("thead", {}, h("tr", {}, h("th", {}, "User"), h("th", {}, "Connection"), h("th", {}, "Info"))), presenceBody),
      ),
      h(
        "section",
        { class: "card", testid: "tail-card" },
        h("div", { class: "card-head" }, h("h2", {}, "Live tail"), h("div", { class: "tools" }, tailState, tailPause, tailClear)),
        tailEmpty,
        tailList,
      ),
      h(
        "section",
        { class: "card", testid: "publish-card" },
        h("div", { class: "card-head" }, h("h2", {}, "Publish")),
        publishForm,
      ),
      h(
        "section",
        { class: "card", testid: "history-card" },
        h(
          "div",
          { class: "card-head" },
          h("h2", {}, "History"),
          h("dl", { class: "facts" }, h("div", {}, h("dt", {}, "epoch"), historyEpoch), h("div", {}, h("dt", {}, "offset"), historyOffset)),
          historyReload,
        ),
        historyNote,
        h("table", {}, h("thead", {}, h("tr", {}, h("th", { class: "num" }, "Offset"), h("th", {}, "Data"))), historyBody),
      ),
    ),
  );

  let alive = true;

  // ---- counts, presence, history ----

  function renderPresence(presence) {
    if (presence === null || presence === undefined) {
      presenceCount.textContent = "–";
      status(presenceNote, "muted", "This channel's namespace has no presence.");
      replace(presenceBody);
      return;
    }
    status(presenceNote, "muted", presence.length ? "" : "Nobody is here.");
    presenceCount.textContent = String(presence.length);
    const sorted = [...presence].sort((a, b) => (a.connection_id < b.connection_id ? -1 : 1));
    replace(
      presenceBody,
      sorted.map((member) =>
        h(
          "tr",
          { testid: "presence-row", dataset: { user: member.user, connectionId: member.connection_id } },
          h("td", {}, link("user", member.user, member.user, { testid: "presence-user" })),
          h("td", { class: "mono", testid: "presence-connection" }, member.connection_id),
          h("td", {}, h("code", { class: "json", testid: "presence-info" }, member.info === null || member.info === undefined ? "null" : json(member.info))),
        ),
      ),
    );
  }

  function renderHistory(history) {
    if (history === null || history === undefined) {
      historyEpoch.textContent = historyOffset.textContent = "–";
      status(historyNote, "muted", "This channel's namespace keeps no history.");
      replace(historyBody);
      return;
    }
    historyEpoch.textContent = history.epoch ?? "–";
    historyOffset.textContent = String(history.offset ?? "–");
    const messages = history.messages || [];
    status(historyNote, "muted", messages.length ? "" : "No messages kept.");
    replace(
      historyBody,
      [...messages].reverse().map((m) =>
        h(
          "tr",
          { testid: "history-row", dataset: { offset: m.offset } },
          h("td", { class: "num mono" }, String(m.offset)),
          h("td", {}, h("pre", { class: "json", testid: "history-data" }, prettyJson(m.data))),
        ),
      ),
    );
  }

  let withHistory = true;
  async function refresh() {
    try {
      const answer = await api.channel(name);
      if (!alive) return;
      subscribers.textContent = String(answer.subscribers ?? 0);
      users.textContent = String(answer.users ?? 0);
      renderPresence(answer.presence);
      if (withHistory) renderHistory(answer.history);
      withHistory = false;
      status(note);
    } catch (err) {
      if (alive && err.status !== 401) status(note, "error", err.message);
    }
  }
  const stopPolling = poll(2000, refresh);
  historyReload.addEventListener("click", () => {
    withHistory = true;
    refresh();
  });

  // ---- live tail ----

  let paused = false;
  let source = null;
  function setTail(state, text) {
    tailState.dataset.state = state;
    tailState.className = `pill ${state === "live" ? "ok" : state === "closed" ? "bad" : "warn"}`;
    tailState.textContent = text;
  }
  function openTail() {
    source = new EventSource(api.tailUrl(name));
    source.addEventListener("open", () => setTail("live", "live"));
    source.addEventListener("message", (event) => {
      if (paused) return;
      let frame;
      try {
        frame = JSON.parse(event.data);
      } catch {
        return;
      }
      tailEmpty.hidden = true;
      const at = new Date();
      tailList.prepend(
        h(
          "li",
          { testid: "tail-row", dataset: { offset: frame.offset } },
          h("time", { class: "muted" }, at.toLocaleTimeString()),
          h("span", { class: "mono offset" }, frame.offset === undefined ? "" : `#${frame.offset}`),
          h("pre", { class: "json", testid: "tail-data" }, json(frame.data)),
        ),
      );
      while (tailList.children.length > MAX_TAIL) tailList.lastElementChild.remove();
    });
    source.addEventListener("error", () => {
      if (!alive) return;
      if (source.readyState === EventSource.CLOSED) {
        // The node refused the stream (401 after the session ended, 503 when
        // it serves its maximum of tails) or answered something else; ask
        // the session, which takes the UI to the login on a 401.
        setTail("closed", "closed");
        recheck();
      } else {
        setTail("connecting", "reconnecting");
      }
    });
  }
  openTail();
  tailPause.addEventListener("click", () => {
    paused = !paused;
    tailPause.textContent = paused ? "Resume" : "Pause";
    tailPause.setAttribute("aria-pressed", String(paused));
  });
  tailClear.addEventListener("click", () => {
    tailList.replaceChildren();
    tailEmpty.hidden = false;
  });

  // ---- publish ----

  publishForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    let data;
    try {
      data = JSON.parse(publishData.value);
    } catch (err) {
      status(publishResult, "error", `Not JSON: ${err.message}`);
      return;
    }
    publishSubmit.disabled = true;
    try {
      const answer = await api.publish(name, data);
      if (!alive) return;
      const where = answer && answer.offset !== undefined ? ` at offset ${answer.offset}, epoch ${answer.epoch}` : "";
      status(publishResult, "ok", `Published${where}.`);
      withHistory = true;
      refresh();
    } catch (err) {
      if (alive && err.status !== 401) status(publishResult, "error", err.message);
    } finally {
      publishSubmit.disabled = false;
    }
  });

  return () => {
    alive = false;
    stopPolling();
    if (source) source.close();
  };
}
