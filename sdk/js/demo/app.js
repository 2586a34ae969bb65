// Switchboard chat demo: one channel, its messages with their offsets, a live
// presence list, the connection state and what recovery did. Plain DOM, no
// build step; the gateway serves this folder at /demo/ and the SDK at
// /demo/switchboard.js when its `demo_dir` is set (development only).
//
// Open it as  /demo/#token=<JWT>  (make run prints two such URLs). Optional
// fragment parameters:
//   tokenUrl=<url>   where to GET a fresh token (plain text, or JSON {"token"})
//                    when the SDK asks for one: before expiry, after a 401 or
//                    a 4001 close. Without it the page reuses #token.
//   channel=<name>   the channel to join (default chat:lobby).
//   format=msgpack   speak MessagePack on the WebSocket (the SDK's `format`
//                    option; default json).
// The fragment is never sent to a server, so the token stays out of logs.

import { Switchboard } from "./switchboard.js";

const params = new URLSearchParams(location.hash.slice(1));
const fragmentToken = params.get("token") || "";
const tokenUrl = params.get("tokenUrl") || "";
const channel = params.get("channel") || "chat:lobby";
const format = params.get("format") === "msgpack" ? "msgpack" : "json";
const wsUrl = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`;

const MAX_MESSAGES = 200;
const MAX_LOG = 100;
const HISTORY_LIMIT = 50;

const $ = (id) => document.querySelector(`[data-testid="${id}"]`);
const ui = {
  state: $("state"),
  stateDetail: $("state-detail"),
  user: $("user"),
  nodeId: $("node-id"),
  connectionId: $("connection-id"),
  transport: $("transport"),
  channel: $("channel"),
  error: $("error"),
  notice: $("notice"),
  messages: $("messages"),
  empty: $("messages-empty"),
  form: $("send-form"),
  input: $("input"),
  send: $("send"),
  presence: $("presence"),
  presenceCount: $("presence-count"),
  recovery: $("recovery"),
  log: $("log"),
};

ui.channel.textContent = channel;

// ---- small view helpers -------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child != null) node.append(child);
  }
  return node;
}

function clock() {
  return new Date().toLocaleTimeString([], { hour12: false });
}

function log(kind, text, attrs = {}) {
  const entry = el(
    "li",
    { "data-testid": "log-entry", "data-kind": kind, class: `log-${kind}`, ...attrs },
    el("time", {}, clock()),
    " ",
    text,
  );
  ui.log.prepend(entry);
  while (ui.log.children.length > MAX_LOG) ui.log.lastElementChild.remove();
}

function showError(err) {
  const code = err && err.code ? err.code : "error";
  const message = err && err.message ? err.message : String(err);
  // The SDK may report one failure twice (an error event, then the state).
  if (!ui.error.hidden && ui.error.dataset.code === code && ui.error.dataset.message === message) return;
  ui.error.hidden = false;
  ui.error.dataset.message = message;
  ui.error.dataset.code = code;
  ui.error.textContent = `${describe(code)} (${code}: ${message})`;
  log("error", `${code}: ${message}`, { "data-code": code });
}

function clearError() {
  ui.error.hidden = true;
  ui.error.textContent = "";
  delete ui.error.dataset.code;
  delete ui.error.dataset.message;
}

function showNotice(text, kind) {
  ui.notice.hidden = false;
  ui.notice.dataset.kind = kind;
  ui.notice.textContent = `${clock()} — ${text}`;
}

// What an error code means for the person looking at the page.
function describe(code) {
  switch (code) {
    case "forbidden_origin":
      return "This page's origin is not allowed to connect; add it to the gateway's allowed_origins.";
    case "unauthorized":
    case "bad_token":
      return "The token was refused; open the page with a fresh #token=…";
    case "token_expired":
      return "The token has expired.";
    case "forbidden":
      return "The token does not grant this.";
    case "rate_limited":
      return "Slow down: rate limited.";
    case "offline":
      return "Not connected: the message was not sent.";
    case "no_token":
      return "No token: open this page as /demo/#token=<JWT> (make run prints two such URLs).";
    default:
      return "Something went wrong.";
  }
}

// A read that failed because the connection dropped is redone after the
// resubscribe; the state indicator already says why.
function lostConnection(err) {
  return err && (err.code === "offline" || err.code === "disconnected" || err.code === "timeout");
}

// ---- messages -----------------------------------------------------------

// Rendered messages by offset (channels with history number them); a
// message without an offset (a channel without history) is kept in arrival
// order. Offsets also drop a message seen twice (history read + live).
const byOffset = new Map();
let unnumbered = 0;

function messageText(data) {
  if (data && typeof data === "object" && typeof data.text === "string") return data.text;
  return JSON.stringify(data);
}

function messageUser(data) {
  if (data && typeof data === "object" && typeof data.user === "string") return data.user;
  return "?";
}

function addMessage(data, offset) {
  const numbered = Number.isInteger(offset);
  if (numbered && byOffset.has(offset)) return;
  const item = el(
    "li",
    { "data-testid": "message", class: messageUser(data) === me ? "mine" : "" },
    el("span", { class: "offset", "data-testid": "message-offset" }, numbered ? `#${offset}` : "·"),
    el("span", { class: "who", "data-testid": "message-user" }, messageUser(data)),
    el("span", { class: "text", "data-testid": "message-text" }, messageText(data)),
  );
  if (numbered) {
    item.dataset.offset = String(offset);
    byOffset.set(offset, item);
    // Keep offset order: a replayed or history message may come after a newer one.
    let before = null;
    for (const other of ui.messages.children) {
      const otherOffset = Number(other.dataset.offset);
      if (other.dataset.offset !== undefined && otherOffset > offset) {
        before = other;
        break;
      }
    }
    ui.messages.insertBefore(item, before);
  } else {
    item.dataset.seq = String(++unnumbered);
    ui.messages.append(item);
  }
  while (ui.messages.children.length > MAX_MESSAGES) {
    const first = ui.messages.firstElementChild;
    if (first.dataset.offset !== undefined) byOffset.delete(Number(first.dataset.offset));
    first.remove();
  }
  ui.empty.hidden = ui.messages.children.length > 0;
  const atBottom = ui.messages.scrollHeight - ui.messages.scrollTop - ui.messages.clientHeight < 80;
  if (atBottom || messageUser(data) === me) ui.messages.scrollTop = ui.messages.scrollHeight;
}

function clearMessages() {
  ui.messages.replaceChildren();
  byOffset.clear();
  ui.empty.hidden = false;
}

// Reads the channel's recent history: at start, and after recovery failed
// (the application's "reload your state").
let historyRun = 0;
async function loadHistory({ replace }) {
  const run = ++historyRun;
  if (!hasHistory) {
    // Nothing stored to re-read: start over from what arrives live.
    if (replace) clearMessages();
    return;
  }
  try {
    const result = await sub.history({ limit: HISTORY_LIMIT });
    if (run !== historyRun) return;
    if (replace) clearMessages();
    for (const frame of result.messages || []) addMessage(frame.data, frame.offset);
    log("history", `read ${(result.messages || []).length} stored messages (latest offset ${result.offset})`);
  } catch (err) {
    if (run === historyRun && !lostConnection(err)) showError(err);
  }
}

// ---- presence -----------------------------------------------------------

// connection_id -> member; shown one line per user.
const members = new Map();
let presenceRun = 0;

function renderPresence() {
  const users = new Map();
  for (const member of members.values()) {
    const entry = users.get(member.user) || { count: 0, info: member.info };
    entry.count += 1;
    users.set(member.user, entry);
  }
  const sorted = [...users.entries()].sort(([a], [b]) => a.localeCompare(b));
  ui.presence.replaceChildren(
    ...sorted.map(([user, { count, info }]) => {
      const name = info && typeof info === "object" && typeof info.name === "string" ? info.name : user;
      return el(
        "li",
        { "data-testid": "member", "data-user": user, class: user === me ? "me" : "" },
        el("span", { class: "dot" }),
        name,
        name !== user ? el("span", { class: "subtle" }, ` @${user}`) : null,
        user === me ? el("span", { class: "subtle" }, " (you)") : null,
        count > 1 ? el("span", { class: "badge", title: "connections" }, `×${count}`) : null,
      );
    }),
  );
  ui.presenceCount.textContent = String(sorted.length);
}

// The full list: at subscribe and after every resubscribe (join/leave
// events of the time we were away are not replayed).
async function refreshPresence() {
  const run = ++presenceRun;
  try {
    const list = await sub.presence();
    if (run !== presenceRun) return;
    members.clear();
    for (const member of list) members.set(member.connection_id, member);
    renderPresence();
  } catch (err) {
    if (run === presenceRun && !lostConnection(err)) showError(err);
  }
}

// ---- the connection -----------------------------------------------------

let me = "";
let usedFragmentToken = false;

async function getToken() {
  if (fragmentToken && !usedFragmentToken) {
    usedFragmentToken = true;
    return fragmentToken;
  }
  if (tokenUrl) {
    const response = await fetch(tokenUrl, { cache: "no-store", credentials: "omit" });
    if (!response.ok) throw new Error(`token endpoint answered ${response.status}`);
    const body = (await response.text()).trim();
    const token = body.startsWith("{") ? JSON.parse(body).token : body;
    log("token", "fetched a fresh token");
    return token;
  }
  return fragmentToken;
}

const STATE_LABEL = {
  connecting: "connecting…",
  connected: "connected",
  disconnected: "disconnected — reconnecting",
  stopped: "stopped",
};

function setState({ state, code, reason, error }) {
  ui.state.dataset.state = state;
  ui.state.textContent = STATE_LABEL[state] || state;
  const detail = [];
  if (code !== undefined && code !== null) detail.push(`code ${code}`);
  if (reason) detail.push(reason);
  if (error && error.code) detail.push(error.code);
  ui.stateDetail.textContent = detail.join(" · ");
  ui.send.disabled = state !== "connected";
  log("state", `${state}${detail.length ? ` (${detail.join(", ")})` : ""}`, { "data-state": state });
  if (state === "connected") clearError();
  if (state === "stopped" && error) showError(error);
}

let sb;
let sub;
let welcomes = 0;
// Whether the channel keeps history (its subscribe reply has an offset).
let hasHistory = false;

function start() {
  if (!fragmentToken && !tokenUrl) {
    setState({ state: "stopped" });
    showError({ code: "no_token", message: "the URL has no #token=" });
    return;
  }

  sb = new Switchboard(wsUrl, { getToken, format, backoff: { min: 250, max: 5_000 } });
  sb.on("state", setState);
  sb.on("error", showError);
  sb.on("welcome", (welcome) => {
    welcomes += 1;
    me = welcome.user;
    ui.user.textContent = welcome.user;
    ui.nodeId.textContent = welcome.node_id;
    ui.connectionId.textContent = welcome.connection_id;
    // "sse" when the WebSocket upgrade was blocked on the way and the SDK
    // fell back to server-sent events.
    ui.transport.textContent = welcome.transport;
    // The format is "json" on SSE whatever the page asked for.
    ui.transport.title = `frames in ${welcome.format}`;
    log("welcome", `on node ${welcome.node_id} as ${welcome.user} over ${welcome.transport} (${welcome.format})`, {
      "data-node": welcome.node_id,
      "data-transport": welcome.transport,
      "data-format": welcome.format,
    });
    renderPresence();
  });

  sub = sb.subscribe(channel, {
    onMessage(data, meta) {
      addMessage(data, meta ? meta.offset : undefined);
    },
    onJoin(member) {
      members.set(member.connection_id, member);
      renderPresence();
    },
    onLeave(member) {
      members.delete(member.connection_id);
      renderPresence();
    },
    onRecover({ recovered, offset, epoch }) {
      // The SDK calls this after every subscribe reply that has a position,
      // and after a resume on a channel without history; on the first
      // connection it is not a resume.
      if (welcomes <= 1) {
        ui.recovery.dataset.recovered = "fresh";
        ui.recovery.textContent = offset === undefined ? "live" : `live from offset ${offset}`;
      } else if (recovered === false) {
        const where = offset === undefined ? "" : ` at offset ${offset}`;
        ui.recovery.dataset.recovered = "false";
        ui.recovery.textContent = `not recovered${where}: reloaded`;
        showNotice("Some messages may be missing — reloaded", "not-recovered");
        log("recover", `recovery failed; now${where || " live"}${epoch ? ` (epoch ${epoch})` : ""}`, {
          "data-recovered": "false",
        });
        loadHistory({ replace: true });
      } else if (recovered === true) {
        ui.recovery.dataset.recovered = "true";
        ui.recovery.textContent = `resumed up to offset ${offset}: nothing missed`;
        log("recover", `resumed; missed messages replayed up to offset ${offset}`, { "data-recovered": "true" });
      }
      refreshPresence();
    },
    onReset({ offset, epoch }) {
      ui.recovery.dataset.recovered = "reset";
      ui.recovery.textContent = `stream reset at offset ${offset}: reloaded history`;
      showNotice("Some messages may be missing — reloaded", "reset");
      log("recover", `stream reset; now at offset ${offset} (epoch ${epoch})`, { "data-recovered": "reset" });
      loadHistory({ replace: true });
    },
    onError(err) {
      showError(err);
    },
  });

  sub.ready.then(
    (result) => {
      hasHistory = result !== null && typeof result === "object" && result.offset !== undefined;
      log("subscribed", `subscribed to ${channel}${result && result.offset !== undefined ? ` at offset ${result.offset}` : ""}`);
      refreshPresence();
      loadHistory({ replace: false });
    },
    showError,
  );

  // For poking at it from the console.
  window.demo = { sb, sub, channel };
}

ui.form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const text = ui.input.value.trim();
  if (!text || !sub) return;
  try {
    await sub.publish({ user: me, text });
    ui.input.value = "";
  } catch (err) {
    showError(err);
  }
  ui.input.focus();
});

start();
