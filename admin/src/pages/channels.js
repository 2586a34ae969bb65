// The channels page: the live channels (cluster-wide in cluster mode) with
// their subscribers and users, searched by name prefix and paged with the
// listing's `next_cursor`. The prefix and page size live in the URL
// (`#/channels?prefix=chat:&limit=50`); the cursors of the pages already
// seen are kept here, for "Previous".

import * as api from "../api.js";
import { h, link, replace, status } from "../dom.js";

const LIMITS = [25, 50, 100, 500];
const DEFAULT_LIMIT = 50;

export function mount(view, { query }, { go }) {
  const prefix = query.get("prefix") || "";
  const requested = Number(query.get("limit"));
  const limit = Number.isInteger(requested) && requested >= 1 && requested <= 1000 ? requested : DEFAULT_LIMIT;

  const prefixInput = h("input", {
    type: "search",
    name: "prefix",
    value: prefix,
    placeholder: "prefix, e.g. chat:",
    "aria-label": "channel name prefix",
    testid: "channels-prefix",
  });
  const limitSelect = h(
    "select",
    { name: "limit", "aria-label": "channels per page", testid: "channels-limit" },
    [...new Set([...LIMITS, limit])].sort((a, b) => a - b).map((n) => h("option", { value: String(n) }, `${n} per page`)),
  );
  limitSelect.value = String(limit);
  const form = h(
    "form",
    { class: "toolbar", testid: "channels-search-form", role: "search" },
    prefixInput,
    limitSelect,
    h("button", { type: "submit", testid: "channels-search" }, "Search"),
  );
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const params = new URLSearchParams();
    if (prefixInput.value) params.set("prefix", prefixInput.value);
    if (limitSelect.value !== String(DEFAULT_LIMIT)) params.set("limit", limitSelect.value);
    const search = params.toString();
    go(`#/channels${search ? `?${search}` : ""}`, { force: true });
  });

  const body = h("tbody", { testid: "channels" });
  const note = h("p", { testid: "error", role: "alert", hidden: true });
  const pageLabel = h("span", { class: "muted", testid: "channels-page" });
  const prev = h("button", { type: "button", testid: "channels-prev", disabled: true }, "← Previous");
  const next = h("button", { type: "button", testid: "channels-next", disabled: true }, "Next →");
  const refresh = h("button", { type: "button", testid: "channels-refresh" }, "Refresh");

  view.replaceChildren(
    h(
      "section",
      { class: "card" },
      h("div", { class: "card-head" }, h("h2", {}, "Channels"), form),
      note,
      h(
        "table",
        {},
        h("thead", {}, h("tr", {}, h("th", {}, "Channel"), h("th", { class: "num" }, "Subscribers"), h("th", { class: "num" }, "Users"))),
        body,
      ),
      h("div", { class: "pager" }, prev, pageLabel, next, refresh),
    ),
  );

  // cursors[i] is the cursor that loads page i (page 0 has none).
  const cursors = [null];
  let page = 0;
  let nextCursor = null;
  let alive = true;

  async function load() {
    prev.disabled = next.disabled = true;
    try {
      const answer = await api.channels({ prefix, limit, cursor: cursors[page] });
      if (!alive) return;
      const list = answer.channels || [];
      nextCursor = answer.next_cursor ?? null;
      replace(
        body,
        list.map((c) =>
          h(
            "tr",
            { testid: "channel-row", dataset: { channel: c.channel } },
            h("td", {}, link("channel", c.channel, c.channel, { class: "mono", testid: "channel-link" })),
            h("td", { class: "num", dataset: { field: "subscribers" } }, String(c.subscribers)),
            h("td", { class: "num", dataset: { field: "users" } }, String(c.users)),
          ),
        ),
        list.length
          ? null
          : h("tr", {}, h("td", { colspan: 3, class: "muted", testid: "channels-empty" }, prefix ? `No live channel starts with “${prefix}”.` : "No live channels.")),
      );
      pageLabel.textContent = `page ${page + 1}`;
      prev.disabled = page === 0;
      next.disabled = nextCursor === null;
      status(note);
    } catch (err) {
      if (alive && err.status !== 401) {
        status(note, "error", err.message);
        prev.disabled = page === 0;
      }
    }
  }

  next.addEventListener("click", () => {
    if (nextCursor === null) return;
    cursors[page + 1] = nextCursor;
    page += 1;
    load();
  });
  prev.addEventListener("click", () => {
    if (page === 0) return;
    page -= 1;
    load();
  });
  refresh.addEventListener("click", load);
  load();
  return () => {
    alive = false;
  };
}
