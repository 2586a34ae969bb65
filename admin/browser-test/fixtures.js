// Fixtures for the admin UI's browser tests. Processes (redis-server,
// gateway nodes, Debian's Chromium through playwright-core) come from the
// JS SDK's harness (sdk/js/browser-test/harness.js, with its dependencies
// from sdk/js/node_modules); this adds nodes with the admin UI on, a test
// client speaking the WebSocket protocol from Node, the admin page's
// helpers, and failure diagnostics that describe admin pages.

import { createHmac } from "node:crypto";
import * as fs from "node:fs";
import * as path from "node:path";

import { API_KEY, eventually, Harness, JWT_SECRET, REPO } from "../../sdk/js/browser-test/harness.js";

export { API_KEY, eventually, REPO };

/** The admin login key of the nodes below: their API key (no admin.secret). */
export const ADMIN_KEY = API_KEY;

/** SWITCHBOARD_* settings that turn the admin UI on. */
export const ADMIN_ENV = { SWITCHBOARD_ADMIN: "true" };

const b64url = (value) => Buffer.from(typeof value === "string" ? value : JSON.stringify(value)).toString("base64url");

/**
 * An HS256 JWT for `sub` (any string: the tests use hostile ones) with
 * `info`, granting subscribe and publish on `chat:*`.
 */
export function jwt(sub, info) {
  const now = Math.floor(Date.now() / 1000);
  const claims = { sub, iat: now, exp: now + 600, channels: ["chat:*"], publish: ["chat:*"] };
  if (info !== undefined) claims.info = info;
  const body = `${b64url({ alg: "HS256", typ: "JWT" })}.${b64url(claims)}`;
  return `${body}.${createHmac("sha256", JWT_SECRET).update(body).digest("base64url")}`;
}

/**
 * A session token as the node signs it (docs/operations.md, "Login and the
 * session cookie"): `v1.<expiry>.<16 bytes hex>.<HMAC-SHA256 hex>` keyed by
 * the admin key over the rest.
 */
export function sessionToken(expiry, key = ADMIN_KEY) {
  const rest = `v1.${expiry}.${"ab".repeat(16)}`;
  return `${rest}.${createHmac("sha256", key).update(rest).digest("hex")}`;
}

/**
 * A client of the gateway's WebSocket protocol, in Node (no SDK, so no
 * reconnect hides a close): connects as `sub`, subscribes, publishes, and
 * records every frame and the close.
 */
export class WsClient {
  constructor(node, sub, info) {
    this.sub = sub;
    this.frames = [];
    this.closed = null;
    this.nextId = 1;
    this.waiting = new Map();
    this.ws = new WebSocket(`ws://${node.addr}/ws?token=${encodeURIComponent(jwt(sub, info))}`);
    this.ws.addEventListener("message", (event) => {
      for (const line of String(event.data).split("\n")) {
        if (!line) continue;
        const frame = JSON.parse(line);
        this.frames.push(frame);
        if (frame.type === "welcome") this.welcome = frame;
        if (frame.type === "reply" && this.waiting.has(frame.id)) {
          const { resolve, reject } = this.waiting.get(frame.id);
          this.waiting.delete(frame.id);
          if (frame.error) reject(new Error(`${frame.error.code}: ${frame.error.message}`));
          else resolve(frame.result);
        }
      }
    });
    this.ws.addEventListener("close", (event) => {
      this.closed = { code: event.code, reason: event.reason };
      for (const { reject } of this.waiting.values()) reject(new Error(`closed ${event.code} ${event.reason}`));
      this.waiting.clear();
    });
  }

  /** Waits for the welcome; returns it. */
  ready() {
    return eventually(
      () => {
        if (this.closed) throw new Error(`${this.sub}'s socket closed: ${JSON.stringify(this.closed)}`);
        return this.welcome;
      },
      { what: `${this.sub}'s welcome` },
    );
  }

  command(type, fields) {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.waiting.set(id, { resolve, reject });
      this.ws.send(JSON.stringify({ type, id, ...fields }));
    });
  }

  subscribe(channel) {
    return this.command("subscribe", { channel });
  }

  /** Publishes; resolves with the reply's result (`{offset, epoch}` with history). */
  publish(channel, data) {
    return this.command("publish", { channel, data });
  }

  /** The data of the `message` frames received on `channel`, in order. */
  messages(channel) {
    return this.frames.filter((f) => f.type === "message" && f.channel === channel);
  }

  close() {
    if (!this.closed) this.ws.close();
  }
}

// ---- the admin page -----------------------------------------------------

/** Opens the admin UI of `node` in a new browser context; records dialogs too. */
export async function openAdmin(h, browser, node, label = `admin @ ${node.nodeId}`) {
  const page = await h.open(browser, `http://127.0.0.1:${node.port}/admin/`, label, {
    setup: async (p) => {
      p.failed = [];
      p.on("response", (response) => {
        if (response.status() >= 400) p.failed.push(`${response.status()} ${new URL(response.url()).pathname}`);
      });
      p.dialogs = [];
      p.on("dialog", async (dialog) => {
        p.dialogs.push(`${dialog.type()}: ${dialog.message()}`);
        await dialog.dismiss().catch(() => {});
      });
    },
  });
  await page.getByTestId("login-form").waitFor();
  return page;
}

/** Types `key` into the login form and submits it. */
export async function submitKey(page, key) {
  await page.getByTestId("login-key").fill(key);
  await page.getByTestId("login-submit").click();
}

/** Logs in with the right key and waits for the nodes page. */
export async function logIn(page) {
  await submitKey(page, ADMIN_KEY);
  await page.getByTestId("nav").waitFor();
}

/** Text of the element with data-testid `id` (first match), or null. */
export function text(page, id) {
  return page.evaluate((testid) => {
    const el = document.querySelector(`[data-testid="${testid}"]`);
    return el && !el.hidden ? el.textContent : null;
  }, id);
}

/**
 * What the elements with data-testid `id` say: their data attributes, their
 * text, and the text of their cells that have a `data-field`.
 */
export function rows(page, id) {
  return page.evaluate(
    (testid) =>
      [...document.querySelectorAll(`[data-testid="${testid}"]`)].map((el) => ({
        ...el.dataset,
        text: el.textContent,
        fields: Object.fromEntries([...el.querySelectorAll("[data-field]")].map((c) => [c.dataset.field, c.textContent])),
      })),
    id,
  );
}

/**
 * The problems a page logged, leaving out Chromium's console line for each
 * answer of 400 or more: those are in `page.failed` (status and path), which
 * a test compares with the refusals it expects.
 */
export function unexpectedProblems(page) {
  return page.problems.filter((p) => !/^console\.error: Failed to load resource: the server responded with a status of \d+/.test(p));
}

/** The page's CSP violations and exceptions: none should ever happen. */
export function violations(page) {
  return page.problems.filter((p) => /Content Security Policy|Refused to|pageerror/.test(p));
}

/**
 * Runs `body(h)` with a fresh harness; on failure saves screenshots under
 * target/browser-test/ and adds what the pages showed and the processes
 * logged to the error. Always closes the harness.
 */
export async function withAdmin(t, body) {
  const h = new Harness(`admin ${t.name}`);
  try {
    await body(h);
  } catch (err) {
    const shots = path.join(REPO, "target/browser-test");
    fs.mkdirSync(shots, { recursive: true });
    const parts = [];
    for (const [i, page] of h.pages.entries()) {
      await page
        .screenshot({ path: path.join(shots, `admin-${t.name.replace(/\W+/g, "-").slice(0, 60)}-${i}.png`), timeout: 5_000 })
        .catch(() => {});
      try {
        const shown = await page.evaluate(() => ({ url: location.href, text: document.body.innerText.slice(0, 3000) }));
        parts.push(`--- page ${page.label} at ${shown.url}:\n${shown.text}`);
      } catch (e) {
        parts.push(`--- page ${page.label}: (closed: ${e.message})`);
      }
      if (page.problems.length) parts.push(page.problems.join("\n"));
      if (page.dialogs?.length) parts.push(`dialogs: ${page.dialogs.join("; ")}`);
      if (page.failed?.length) parts.push(`answers of 400 or more: ${page.failed.join("; ")}`);
    }
    for (const child of h.children) {
      let log = "(no log)";
      try {
        log = fs.readFileSync(child.log, "utf8").trimEnd().split("\n").slice(-15).join("\n");
      } catch {
        // no log
      }
      parts.push(`--- ${child.name} log (tail):\n${log}`);
    }
    err.message += `\n\n${parts.join("\n")}`;
    throw err;
  } finally {
    await h.close();
  }
}

/** Asserts the row list `id` eventually satisfies `check(rows)`; returns the rows. */
export function eventuallyRows(page, id, check, what) {
  return eventually(
    async () => {
      const found = await rows(page, id);
      return check(found) ? found : false;
    },
    { what },
  );
}
