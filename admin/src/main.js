// The admin UI's entry point: hash routing between the pages, the session
// (probed at start, dropped on any 401), the top bar. The node serves this
// bundle as /admin/app.js under a Content-Security-Policy that allows only
// its own scripts and styles: nothing here evaluates strings or writes
// markup, and every value from the node is rendered as text (see dom.js).
//
// Routes: #/login, #/nodes, #/channels?prefix=&limit=, #/channel/<name>,
// #/user/<id> (names and ids URI-encoded).

import * as api from "./api.js";
import { h } from "./dom.js";
import * as channelPage from "./pages/channel.js";
import * as channelsPage from "./pages/channels.js";
import * as loginPage from "./pages/login.js";
import * as nodesPage from "./pages/nodes.js";
import * as userPage from "./pages/user.js";

const PAGES = {
  nodes: { page: nodesPage, title: "Nodes", nav: "nodes" },
  channels: { page: channelsPage, title: "Channels", nav: "channels" },
  channel: { page: channelPage, title: "Channel", nav: "channels", needsId: true },
  user: { page: userPage, title: "User", nav: "user", needsId: true },
};

const $ = (id) => document.querySelector(`[data-testid="${id}"]`);
const view = $("view");
const nav = $("nav");
const logoutButton = $("logout");
const lookup = $("user-lookup");
const lookupInput = $("user-lookup-id");

let cleanup = () => {};
// What the login page says when it next shows: {kind: "error"|"ok", text}.
let loginNotice = null;
let afterLogin = "";
let showingLogin = false;

/** "#/channel/chat%3Aa?x=1" -> {route: "channel", id: "chat:a", query}. */
function parse(hash) {
  const text = hash.replace(/^#\/?/, "");
  const q = text.indexOf("?");
  const pathPart = q === -1 ? text : text.slice(0, q);
  const query = new URLSearchParams(q === -1 ? "" : text.slice(q + 1));
  const slash = pathPart.indexOf("/");
  const route = slash === -1 ? pathPart : pathPart.slice(0, slash);
  let id = null;
  if (slash !== -1) {
    try {
      id = decodeURIComponent(pathPart.slice(slash + 1));
    } catch {
      id = pathPart.slice(slash + 1);
    }
  }
  return { route: route || "nodes", id, query };
}

function go(hash, { force = false } = {}) {
  if (location.hash === hash) {
    if (force) render();
  } else {
    location.hash = hash;
  }
}

/** Asks the node for the session: on a 401 the UI goes to the login. */
function recheck() {
  api.session().catch(() => {});
}

function showChrome(on) {
  nav.hidden = !on;
  logoutButton.hidden = !on;
  lookup.hidden = !on;
  document.body.dataset.loggedIn = String(on);
}

function render() {
  cleanup();
  cleanup = () => {};
  const { route, id, query } = parse(location.hash);
  if (!api.loggedIn() || route === "login") {
    if (route !== "login") afterLogin = location.hash;
    showChrome(false);
    document.title = "Log in · Switchboard admin";
    const notice = loginNotice;
    loginNotice = null;
    showingLogin = true;
    cleanup = loginPage.mount(
      view,
      { notice, next: afterLogin && !afterLogin.startsWith("#/login") ? afterLogin : "#/nodes" },
      {
        go: (hash) => {
          afterLogin = "";
          showChrome(true);
          go(hash, { force: true });
        },
      },
    );
    return;
  }
  showingLogin = false;
  showChrome(true);
  for (const link of nav.querySelectorAll("a")) {
    link.classList.toggle("active", link.dataset.nav === (PAGES[route] && PAGES[route].nav));
  }
  const entry = PAGES[route];
  if (!entry || (entry.needsId && !id)) {
    document.title = "Not found · Switchboard admin";
    view.replaceChildren(h("section", { class: "card", testid: "not-found" }, h("h2", {}, "No such page"), h("p", {}, h("a", { href: "#/nodes" }, "Go to the nodes"))));
    return;
  }
  document.title = `${id ? `${id} · ` : ""}${entry.title} · Switchboard admin`;
  cleanup = entry.page.mount(view, { id, query }, { go, recheck }) || (() => {});
}

// Requests still in flight when the first 401 arrived answer 401 too: the
// login page is already up, and re-rendering it would wipe a typed key.
api.onUnauthorized((error) => {
  if (showingLogin) return;
  if (parse(location.hash).route !== "login") afterLogin = location.hash;
  loginNotice = { kind: "error", text: error.message };
  render();
});

logoutButton.addEventListener("click", async () => {
  logoutButton.disabled = true;
  try {
    await api.logout();
  } catch {
    // the cookie is cleared or was gone already; the page logs out anyway
  } finally {
    logoutButton.disabled = false;
    afterLogin = "";
    loginNotice = { kind: "ok", text: "Logged out." };
    go("#/login", { force: true });
  }
});

lookup.addEventListener("submit", (event) => {
  event.preventDefault();
  const id = lookupInput.value.trim();
  if (id) go(`#/user/${encodeURIComponent(id)}`, { force: true });
});

window.addEventListener("hashchange", render);

// At start: a cookie from an earlier login may still be valid.
api
  .session({ quiet401: true })
  .catch(() => {})
  .finally(() => {
    if (!api.loggedIn() && parse(location.hash).route !== "login") afterLogin = location.hash;
    document.body.dataset.ready = "true";
    render();
  });
