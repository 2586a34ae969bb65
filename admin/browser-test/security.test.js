// The admin UI's security in Chromium: hostile user ids, presence info,
// message data and channel names render as inert text; a cross-site or
// tokenless POST is refused; an expired or missing session takes the page
// back to the login; and a node with the UI off answers 404 on /admin.

import assert from "node:assert/strict";
import { test } from "node:test";

import {
  ADMIN_ENV,
  ADMIN_KEY,
  eventually,
  eventuallyRows,
  logIn,
  openAdmin,
  rows,
  sessionToken,
  text,
  violations,
  withAdmin,
  WsClient,
} from "./fixtures.js";

const IMG = `"><img src=x onerror=alert(1)>`;
const SCRIPT = `<script>alert(2)</script>`;

/** Nothing the data held became markup: no image, no second script, no handler, no dialog. */
async function assertInert(page, base) {
  const dom = await page.evaluate(() => ({
    images: document.querySelectorAll("img").length,
    scripts: [...document.scripts].map((s) => s.src),
    handlers: [...document.querySelectorAll("*")].flatMap((el) =>
      [...el.attributes].filter((a) => a.name.startsWith("on")).map((a) => `${el.tagName}.${a.name}`),
    ),
    iframes: document.querySelectorAll("iframe, object, embed").length,
  }));
  assert.equal(dom.images, 0, "no <img> was injected");
  assert.deepEqual(dom.scripts, [`${base}/admin/app.js`], "no <script> was injected");
  assert.deepEqual(dom.handlers, [], "no event handler attribute was injected");
  assert.equal(dom.iframes, 0);
  assert.deepEqual(page.dialogs, [], "no dialog opened");
  assert.deepEqual(violations(page), [], "no CSP violation and no exception");
}

test("channel names, user ids, presence info and message data render as text", { timeout: 120_000 }, (t) =>
  withAdmin(t, async (h) => {
    const node = await h.gateway({ nodeId: "gw-xss", env: ADMIN_ENV });
    const room = "chat:xss";
    const sub = `${IMG}${SCRIPT}`;
    const info = { name: SCRIPT, bio: IMG };
    const mallory = new WsClient(node, sub, info);
    t.after(() => mallory.close());
    await mallory.ready();
    await mallory.subscribe(room);

    const browser = await h.browser();
    const page = await openAdmin(h, browser, node);
    await logIn(page);

    // The channel page: the hostile user id and info in presence.
    await page.goto(`${node.base}/admin/#/channel/${encodeURIComponent(room)}`);
    const presence = await eventuallyRows(page, "presence-row", (r) => r.length === 1, "mallory in presence");
    assert.equal(presence[0].user, sub);
    assert.equal(await text(page, "presence-user"), sub, "the user id is shown verbatim");
    // The node stores info as a JSON object (keys sorted): the text is that JSON.
    assert.deepEqual(JSON.parse(await text(page, "presence-info")), info, "the info is shown verbatim");
    assert.ok(await page.getByText(sub, { exact: true }).first().isVisible(), "the user id is visible as text");

    // Message data in the live tail and in history.
    await eventually(async () => (await page.getByTestId("tail-state").getAttribute("data-state")) === "live", {
      what: "the live tail open",
    });
    const data = { text: SCRIPT, html: IMG, nested: { [SCRIPT]: [IMG] } };
    await mallory.publish(room, data);
    await eventuallyRows(page, "tail-row", (r) => r.length === 1, "the message in the tail");
    assert.equal(await text(page, "tail-data"), JSON.stringify(data), "the tail shows the data verbatim");
    await page.getByTestId("history-reload").click();
    await eventuallyRows(page, "history-row", (r) => r.length === 1, "the message in history");
    assert.deepEqual(JSON.parse(await text(page, "history-data")), data, "history shows the data verbatim");

    // Published from the box: a payload that would close the textarea.
    const boxed = { text: `</textarea>${IMG}</pre>${SCRIPT}` };
    await page.getByTestId("publish-data").fill(JSON.stringify(boxed));
    await page.getByTestId("publish-submit").click();
    await eventually(() => mallory.messages(room).some((m) => m.data.text === boxed.text), { what: "the boxed message delivered" });
    await eventuallyRows(page, "tail-row", (r) => r.length === 2, "the boxed message in the tail");
    assert.equal(await text(page, "tail-data"), JSON.stringify(boxed));
    await assertInert(page, node.base);

    // The user's page, reached through the presence link.
    await page.getByTestId("presence-user").click();
    await eventually(async () => (await text(page, "user-id")) === sub, { what: "the user page with the id verbatim" });
    await eventuallyRows(page, "connection-row", (r) => r.length === 1, "mallory's connection");
    await assertInert(page, node.base);

    // A channel name is limited to letters, digits and _ - : . @ / = + (the
    // node refuses anything else), but the page takes it from its URL: a
    // crafted link must show the name as text, and the node's refusal.
    const crafted = `${IMG}${SCRIPT}`;
    await page.goto(`${node.base}/admin/#/channel/${encodeURIComponent(crafted)}`);
    await eventually(async () => (await text(page, "channel-name")) === crafted, { what: "the crafted name shown as text" });
    const refusal = await eventually(() => text(page, "error"), { what: "the node's refusal of the name" });
    assert.match(refusal, /^invalid channel: /, `the node's message: ${refusal}`);
    assert.ok(await page.getByText(crafted, { exact: true }).first().isVisible());
    await eventually(async () => (await page.getByTestId("tail-state").getAttribute("data-state")) === "closed", {
      what: "the tail refused",
    });
    // The same through the channel search and the user lookup.
    await page.goto(`${node.base}/admin/#/channels?prefix=${encodeURIComponent(crafted)}`);
    assert.equal(await page.getByTestId("channels-prefix").inputValue(), crafted);
    await eventually(async () => /^invalid prefix: /.test((await text(page, "error")) ?? ""), { what: "the prefix refused" });
    await page.getByTestId("user-lookup-id").fill(crafted);
    await page.getByTestId("user-lookup-go").click();
    await eventually(async () => (await text(page, "user-id")) === crafted, { what: "the looked-up id shown as text" });
    await assertInert(page, node.base);
    // A channel whose name uses every punctuation mark a name may hold.
    const odd = "chat:a/b=c+d@e.f_g-h";
    await mallory.subscribe(odd);
    await page.goto(`${node.base}/admin/#/channels?prefix=chat:a`);
    await eventuallyRows(page, "channel-row", (r) => r.some((c) => c.channel === odd), "the odd name listed");
    await page.locator('[data-testid="channel-link"]').filter({ hasText: odd }).click();
    await eventuallyRows(page, "presence-row", (r) => r.length === 1 && r[0].user === sub, "the odd channel's presence");
    assert.equal(await text(page, "channel-name"), odd);
    await assertInert(page, node.base);
  }),
);

test("a cross-site or tokenless POST is refused with 403 and changes nothing", { timeout: 120_000 }, (t) =>
  withAdmin(t, async (h) => {
    const node = await h.gateway({ nodeId: "gw-csrf", env: ADMIN_ENV });
    const room = "chat:csrf";
    const client = new WsClient(node, "victim-client");
    t.after(() => client.close());
    await client.ready();
    await client.subscribe(room);

    const browser = await h.browser();
    const page = await openAdmin(h, browser, node);
    await logIn(page);
    const context = page.context();
    const [cookie] = (await context.cookies(`${node.base}/admin/`)).filter((c) => c.name === "sb_admin");
    assert.ok(cookie, "logged in: the browser holds the session cookie");

    // A page on another port of the same host: same-site, so the browser
    // sends the SameSite=Strict cookie with its requests; the node must
    // refuse them for their Origin and the missing CSRF token.
    const foreignServer = await h.httpServer(() => "a page on another origin");
    const foreignOrigin = `http://127.0.0.1:${foreignServer.port}`;
    const foreign = await context.newPage();
    await foreign.goto(`${foreignOrigin}/`);
    const attempts = [
      ["fetch", `${node.base}/admin/api/publish`, { channel: room, data: { text: "forged by fetch" } }],
      ["fetch", `${node.base}/admin/api/disconnect`, { user: "victim-client" }],
      ["fetch", `${node.base}/admin/logout`, {}],
      ["form", `${node.base}/admin/api/publish`, { channel: room, data: { text: "forged by a form" } }],
    ];
    for (const [how, url, body] of attempts) {
      const answered = foreign.waitForResponse((r) => r.url() === url);
      await foreign.evaluate(
        ([kind, target, payload]) => {
          if (kind === "fetch") {
            fetch(target, {
              method: "POST",
              mode: "no-cors",
              credentials: "include",
              headers: { "Content-Type": "text/plain" },
              body: JSON.stringify(payload),
            }).catch(() => {});
          } else {
            const form = document.createElement("form");
            form.method = "POST";
            form.action = target;
            form.enctype = "text/plain";
            const input = document.createElement("input");
            input.name = JSON.stringify(payload).slice(0, -1) + ', "x": "';
            input.value = '"}';
            form.append(input);
            document.body.append(form);
            form.submit();
          }
        },
        [how, url, body],
      ).catch((err) => {
        // A form's submit navigates away, which may end the evaluation.
        if (how !== "form") throw err;
      });
      // The node checks the session first (401 without a valid cookie), so
      // a 403 also shows that the browser sent the cookie along.
      const response = await answered;
      assert.equal(response.status(), 403, `a cross-origin ${how} POST to ${url} is refused`);
      if (how === "form") {
        assert.deepEqual(JSON.parse(await response.text()), { error: "forbidden", message: "cross-origin request refused" });
        await foreign.goto(`${foreignOrigin}/`);
      }
    }

    // A cross-site page (another host): the SameSite=Strict cookie stays home.
    const crossSite = await context.newPage();
    await crossSite.goto(`http://localhost:${foreignServer.port}/`);
    const answered = crossSite.waitForResponse((r) => r.url().endsWith("/admin/api/publish"));
    await crossSite.evaluate((target) => {
      fetch(target, { method: "POST", mode: "no-cors", credentials: "include", body: "{}" }).catch(() => {});
    }, `${node.base}/admin/api/publish`);
    assert.equal((await answered).status(), 401, "no session: the browser kept the cookie from a cross-site request");

    // Direct requests with the cookie: without the CSRF token, with a wrong
    // one, with the right one from a foreign Origin: all 403.
    const jar = `sb_admin=${cookie.value}`;
    const session = await fetch(`${node.base}/admin/api/session`, { headers: { cookie: jar } });
    assert.equal(session.status, 200);
    const { csrf } = await session.json();
    assert.match(csrf, /^[0-9a-f]{64}$/);
    const post = (headers, data) =>
      fetch(`${node.base}/admin/api/publish`, {
        method: "POST",
        headers: { cookie: jar, "content-type": "application/json", ...headers },
        body: JSON.stringify({ channel: room, data }),
      });
    for (const [headers, message] of [
      [{}, "missing or wrong CSRF token"],
      [{ "x-csrf-token": "0".repeat(64) }, "missing or wrong CSRF token"],
      [{ "x-csrf-token": csrf, origin: foreignOrigin }, "cross-origin request refused"],
    ]) {
      const refused = await post(headers, { text: `forged with ${JSON.stringify(headers)}` });
      assert.equal(refused.status, 403, `refused with ${JSON.stringify(Object.keys(headers))}`);
      assert.deepEqual(await refused.json(), { error: "forbidden", message });
    }

    // The right token from the node's own origin goes through, and it is the
    // only message the client ever got: none of the refused ones was
    // published (they would have arrived first), and it is still connected.
    const allowed = await post({ "x-csrf-token": csrf, origin: node.base }, { text: "allowed" });
    assert.equal(allowed.status, 200, await allowed.clone().text());
    await eventually(() => client.messages(room).length > 0, { what: "the allowed message delivered" });
    assert.deepEqual(client.messages(room).map((m) => m.data.text), ["allowed"]);
    assert.equal(client.closed, null, "the forged disconnect did nothing");
    // ...and the forged logout did not end the admin's session.
    await page.getByTestId("nav-channels").click();
    await eventuallyRows(page, "channel-row", (r) => r.some((c) => c.channel === room), "the admin still logged in");
  }),
);

test("a session that expires or disappears takes the page back to the login", { timeout: 120_000 }, (t) =>
  withAdmin(t, async (h) => {
    const node = await h.gateway({ nodeId: "gw-session", env: { ...ADMIN_ENV, SWITCHBOARD_ADMIN_SESSION_TTL: "1m" } });
    const browser = await h.browser();
    const page = await openAdmin(h, browser, node);
    const context = page.context();
    await logIn(page);
    await eventuallyRows(page, "node-row", (r) => r.length === 1, "the nodes page");

    // The cookie: HttpOnly (the page cannot read it), SameSite=Strict, on
    // /admin, and it lasts the configured minute.
    const [cookie] = (await context.cookies(`${node.base}/admin/`)).filter((c) => c.name === "sb_admin");
    assert.ok(cookie, "the session cookie is set");
    assert.equal(cookie.httpOnly, true);
    assert.equal(cookie.sameSite, "Strict");
    assert.equal(cookie.path, "/admin");
    const lifetime = cookie.expires - Date.now() / 1000;
    assert.ok(lifetime > 30 && lifetime <= 61, `the cookie lasts the session ttl of 1m: ${lifetime} s`);
    assert.equal(await page.evaluate(() => document.cookie), "", "the page's script cannot read the cookie");
    assert.ok(!cookie.value.includes(ADMIN_KEY), "the key is not in the cookie");

    // A token signed with the key but past its expiry: the node refuses it,
    // and the page (polling the nodes every 2 s) returns to the login with
    // the node's message. The same token with a future expiry is accepted,
    // so it is the expiry that is refused.
    const now = Math.floor(Date.now() / 1000);
    const probe = (value) => fetch(`${node.base}/admin/api/session`, { headers: { cookie: `sb_admin=${value}` } });
    assert.equal((await probe(sessionToken(now + 300))).status, 200, "a token signed like the node's is accepted");
    const stale = await probe(sessionToken(now - 5));
    assert.equal(stale.status, 401);
    assert.deepEqual(await stale.json(), { error: "unauthorized", message: "admin session expired; log in again" });
    await context.clearCookies();
    await context.addCookies([{ ...cookie, value: sessionToken(now - 5), expires: now + 300 }]);
    await eventually(async () => (await text(page, "login-error")) === "admin session expired; log in again", {
      what: "the login page with the node's message after the session expired",
    });
    assert.equal(await page.getByTestId("nav").isVisible(), false);
    assert.match(page.url(), /#\/nodes$/, "the page remembers where it was");

    // Logging in again returns to the same page.
    await logIn(page);
    await eventuallyRows(page, "node-row", (r) => r.length === 1, "the nodes page again");

    // The cookie gone (cleared, or a browser that dropped it): the same.
    await page.goto(`${node.base}/admin/#/channels`);
    await eventually(() => page.getByTestId("channels-search-form").isVisible(), { what: "the channels page" });
    await context.clearCookies();
    await page.getByTestId("channels-refresh").click();
    await eventually(async () => (await text(page, "login-error")) === "log in first", {
      what: "the login page after the cookie disappeared",
    });

    // Logging out clears the cookie.
    await logIn(page);
    await eventually(() => page.getByTestId("channels-search-form").isVisible(), { what: "the channels page again" });
    await page.getByTestId("logout").click();
    await eventually(async () => (await text(page, "login-error")) === "Logged out.", { what: "logged out" });
    const left = (await context.cookies(`${node.base}/admin/`)).filter((c) => c.name === "sb_admin");
    assert.deepEqual(left, [], "the cookie is gone");
    assert.deepEqual(violations(page), []);
  }),
);

test("a node with the admin UI off answers 404 on /admin as on any unknown route", { timeout: 90_000 }, (t) =>
  withAdmin(t, async (h) => {
    const off = await h.gateway({ nodeId: "gw-off" });
    const on = await h.gateway({ nodeId: "gw-on", env: ADMIN_ENV });
    const unknown = await fetch(`${off.base}/no-such-route`);
    assert.equal(unknown.status, 404);
    const unknownBody = await unknown.text();

    const requests = [
      ["GET", "/admin"],
      ["GET", "/admin/"],
      ["GET", "/admin/app.js"],
      ["GET", "/admin/app.css"],
      ["GET", "/admin/api/session"],
      ["GET", "/admin/api/nodes"],
      ["GET", "/admin/api/tail?channel=chat:a"],
      ["POST", "/admin/login", JSON.stringify({ key: ADMIN_KEY })],
      ["POST", "/admin/api/publish", JSON.stringify({ channel: "chat:a", data: 1 })],
    ];
    for (const [method, route, body] of requests) {
      const init = { method, body, headers: body ? { "content-type": "application/json" } : {}, redirect: "manual" };
      const answer = await fetch(`${off.base}${route}`, init);
      assert.equal(answer.status, 404, `${method} ${route} with the UI off`);
      assert.equal(await answer.text(), unknownBody, `${method} ${route} answers as an unknown route does`);
      // The same request where the UI is on is not a 404: the check can tell.
      const control = await fetch(`${on.base}${route}`, init);
      await control.arrayBuffer();
      assert.notEqual(control.status, 404, `${method} ${route} with the UI on`);
    }

    const browser = await h.browser();
    const context = await browser.newContext();
    const page = await context.newPage();
    const response = await page.goto(`${off.base}/admin/`);
    assert.equal(response.status(), 404);
    assert.equal(await page.getByTestId("login-form").count(), 0, "no admin page");
    await context.close();
  }),
);
