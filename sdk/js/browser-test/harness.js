// Fixtures for the browser tests: a real redis-server, gateway nodes
// (target/debug/switchboard), the project's NGINX configuration and Debian's
// Chromium driven by playwright-core, all on free loopback ports with their
// state in one temp dir. Everything started here is stopped by
// `Harness.close()` (called from each test's `t.after`), and killed when the
// test process exits whatever happened.
//
// Needs: `cargo build -p switchboard-gateway`, redis-server, nginx, openssl
// and chromium (scripts/install-test-deps.sh installs them). Set
// KEEP_TEST_DIRS=1 to keep the temp dirs (logs, NGINX config) after a run;
// a failing test also saves its pages' screenshots under target/browser-test/.

import { spawn, spawnSync } from "node:child_process";
import { createHmac } from "node:crypto";
import * as fs from "node:fs";
import * as http from "node:http";
import * as net from "node:net";
import * as os from "node:os";
import * as path from "node:path";
import { fileURLToPath } from "node:url";

import { chromium } from "playwright-core";

const here = path.dirname(fileURLToPath(import.meta.url));
export const SDK_DIR = path.resolve(here, "..");
export const REPO = path.resolve(SDK_DIR, "../..");
export const GATEWAY_BIN = path.join(REPO, "target/debug/switchboard");
export const DEV_CONFIG = path.join(REPO, "config/dev.toml");
export const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
export const CHROMIUM_ARGS = [
  "--headless=new",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

export const JWT_SECRET = "browser-test-secret-0123456789-abcdefghij";
export const API_KEY = "browser-test-api-key-0123456789";

// ---- small utilities ----------------------------------------------------

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Polls `probe` (sync or async) every `interval` ms until it returns a truthy
 * value, which it returns; throws after `timeout` ms with `what` and the
 * last value or error seen.
 */
export async function eventually(probe, { timeout = 15_000, interval = 50, what = "condition" } = {}) {
  const deadline = Date.now() + timeout;
  let last;
  for (;;) {
    try {
      last = await probe();
      if (last) return last;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) {
      const seen = last instanceof Error ? last.stack || last.message : JSON.stringify(last);
      throw new Error(`timed out after ${timeout} ms waiting for ${what}; last seen: ${seen}`);
    }
    await sleep(interval);
  }
}

/** A TCP port free on 127.0.0.1 (and on ::1 too when `ipv6`). */
export async function freePort({ ipv6 = false } = {}) {
  for (let attempt = 0; attempt < 50; attempt++) {
    const port = await listenOnce("127.0.0.1", 0);
    if (!ipv6 || (await listenOnce("::1", port).then(() => true, () => false))) return port;
  }
  throw new Error("no port free on both 127.0.0.1 and ::1");
}

function listenOnce(host, port) {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once("error", reject);
    server.listen({ host, port, exclusive: true }, () => {
      const chosen = server.address().port;
      server.close(() => resolve(chosen));
    });
  });
}

function canConnect(port, host = "127.0.0.1") {
  return new Promise((resolve) => {
    const socket = net.connect({ host, port });
    socket.once("connect", () => {
      socket.destroy();
      resolve(true);
    });
    socket.once("error", () => resolve(false));
  });
}

function b64url(value) {
  return Buffer.from(typeof value === "string" ? value : JSON.stringify(value)).toString("base64url");
}

/**
 * An HS256 JWT for `user`, valid `ttl` seconds, granting subscribe and
 * publish on `chat:*`, with `info.name`.
 */
export function token(user, { ttl = 600, secret = JWT_SECRET, name } = {}) {
  const now = Math.floor(Date.now() / 1000);
  const claims = {
    sub: user,
    iat: now,
    exp: now + ttl,
    channels: ["chat:*"],
    publish: ["chat:*"],
    info: { name: name || user[0].toUpperCase() + user.slice(1) },
  };
  const body = `${b64url({ alg: "HS256", typ: "JWT" })}.${b64url(claims)}`;
  const signature = createHmac("sha256", secret).update(body).digest("base64url");
  return { jwt: `${body}.${signature}`, exp: claims.exp };
}

/** Last `lines` lines of a text file, for failure messages. */
function tail(file, lines = 30) {
  try {
    return fs.readFileSync(file, "utf8").trimEnd().split("\n").slice(-lines).join("\n");
  } catch {
    return "(no log)";
  }
}

async function httpGet(url) {
  const response = await fetch(url, { signal: AbortSignal.timeout(2_000) });
  return { status: response.status, body: await response.text() };
}

// Every child process of every harness, killed when the test process exits
// (normally, or on SIGINT/SIGTERM). NGINX gets SIGTERM: its master then stops
// its workers, which a SIGKILL would orphan.
const live = new Set();
function killAll() {
  for (const child of live) {
    try {
      child.kill(child.name === "nginx" ? "SIGTERM" : "SIGKILL");
    } catch {
      // already gone
    }
  }
}
process.on("exit", killAll);
for (const signal of ["SIGINT", "SIGTERM"]) {
  process.once(signal, () => {
    killAll();
    process.exit(128 + (signal === "SIGINT" ? 2 : 15));
  });
}

function track(child) {
  live.add(child);
  child.once("exit", () => live.delete(child));
  return child;
}

function exited(child) {
  return child.exitCode !== null || child.signalCode !== null;
}

/** Sends `signal`, waits up to `timeout` ms for the exit, then SIGKILL. */
async function stopChild(child, signal = "SIGTERM", timeout = 5_000) {
  if (!child || exited(child)) return;
  const done = new Promise((resolve) => child.once("exit", resolve));
  child.kill(signal);
  const timer = setTimeout(() => child.kill("SIGKILL"), timeout);
  await done;
  clearTimeout(timer);
}

// ---- the harness --------------------------------------------------------

export class Harness {
  constructor(name = "browser-test") {
    this.dir = fs.mkdtempSync(path.join(os.tmpdir(), `switchboard-${name.replace(/\W+/g, "-").slice(0, 40)}-`));
    // NGINX workers run as an unprivileged user when the tests run as root;
    // they must reach the temp dirs below.
    fs.chmodSync(this.dir, 0o755);
    this.children = [];
    this.servers = [];
    this.browsers = [];
    this.pages = [];
  }

  file(name) {
    return path.join(this.dir, name);
  }

  spawn(name, command, args, env) {
    const log = this.file(`${name}.log`);
    const out = fs.openSync(log, "a");
    const child = track(
      spawn(command, args, {
        env: { PATH: process.env.PATH || "/usr/bin:/bin", ...env },
        stdio: ["ignore", out, out],
        cwd: this.dir,
      }),
    );
    fs.closeSync(out);
    child.log = log;
    child.name = name;
    this.children.push(child);
    return child;
  }

  /** A real redis-server, no persistence. */
  async redis() {
    const port = await freePort();
    const child = this.spawn("redis", "redis-server", [
      "--port", String(port),
      "--bind", "127.0.0.1",
      "--save", "",
      "--appendonly", "no",
      "--dir", this.dir,
    ]);
    await eventually(
      async () => {
        if (exited(child)) throw new Error(`redis-server exited:\n${tail(child.log)}`);
        return redisPing(port);
      },
      { what: `redis-server on ${port}` },
    );
    return { port, url: `redis://127.0.0.1:${port}/0`, child };
  }

  /**
   * A gateway node with config/dev.toml (chat:* has presence and join/leave)
   * and the demo served from sdk/js. `redis` (from `redis()`) puts it in
   * cluster mode; `env` overrides or adds SWITCHBOARD_* settings; `config`,
   * TOML text, replaces config/dev.toml (for settings with no variable,
   * such as a namespace's).
   */
  async gateway({ nodeId, redis, env = {}, config } = {}) {
    if (!fs.existsSync(GATEWAY_BIN)) {
      throw new Error(`${GATEWAY_BIN} is missing; run \`cargo build -p switchboard-gateway\``);
    }
    const port = await freePort();
    const settings = {
      SWITCHBOARD_LISTEN: `127.0.0.1:${port}`,
      SWITCHBOARD_NODE_ID: nodeId,
      SWITCHBOARD_JWT_HS256_SECRET: JWT_SECRET,
      SWITCHBOARD_API_KEY: API_KEY,
      SWITCHBOARD_ALLOWED_ORIGINS: "*",
      SWITCHBOARD_DEMO_DIR: SDK_DIR,
      SWITCHBOARD_LOG_FORMAT: "json",
      SWITCHBOARD_DRAIN_WINDOW: "0s",
      SWITCHBOARD_TRUSTED_PROXIES: "127.0.0.1/32,::1/128",
      SWITCHBOARD_CONN_RATE_PER_IP: "10000",
      SWITCHBOARD_CONN_BURST_PER_IP: "10000",
      SWITCHBOARD_MSG_RATE: "10000",
      SWITCHBOARD_MSG_BURST: "10000",
      ...(redis ? { SWITCHBOARD_REDIS_URL: redis.url } : {}),
      ...env,
    };
    let configFile = DEV_CONFIG;
    if (config !== undefined) {
      configFile = this.file(`${nodeId}.toml`);
      fs.writeFileSync(configFile, config);
    }
    const child = this.spawn(nodeId, GATEWAY_BIN, ["--config", configFile], settings);
    const base = `http://127.0.0.1:${port}`;
    await eventually(
      async () => {
        if (exited(child)) throw new Error(`gateway ${nodeId} exited:\n${tail(child.log)}`);
        return (await httpGet(`${base}/readyz`)).status === 200;
      },
      { what: `gateway ${nodeId} ready on ${port}`, timeout: 20_000 },
    );
    return {
      nodeId,
      port,
      base,
      addr: `127.0.0.1:${port}`,
      child,
      log: () => fs.readFileSync(child.log, "utf8"),
      /** The node's JSON log lines, parsed (lines that are not JSON are skipped). */
      events: () =>
        fs
          .readFileSync(child.log, "utf8")
          .split("\n")
          .flatMap((line) => {
            try {
              return [JSON.parse(line)];
            } catch {
              return [];
            }
          }),
      /** The node's Prometheus text (GET /metrics). */
      metrics: async () => {
        const { status, body } = await httpGet(`${base}/metrics`);
        if (status !== 200) throw new Error(`GET /metrics answered ${status}`);
        return body;
      },
      /** POST /api/publish on this node; returns the parsed answer. */
      publish: async (channel, data) => {
        const response = await fetch(`${base}/api/publish`, {
          method: "POST",
          headers: { authorization: `Bearer ${API_KEY}`, "content-type": "application/json" },
          body: JSON.stringify({ channel, data }),
          signal: AbortSignal.timeout(5_000),
        });
        const body = await response.json();
        if (response.status !== 200) throw new Error(`publish answered ${response.status}: ${JSON.stringify(body)}`);
        return body;
      },
      kill: (signal) => child.kill(signal),
      stop: (signal = "SIGTERM") => stopChild(child, signal, 15_000),
    };
  }

  /**
   * The real NGINX with the project's template, rendered by
   * scripts/nginx-conf.sh exactly as crates/gateway/tests/common/nginx.rs
   * does, in front of `gateways`. With `ipv6`, the plain listener also
   * listens on [::1] at the same port (the rendered listen line is edited,
   * as the Rust deploy test edits it). `edit(text)`, when given, rewrites
   * the rendered configuration before NGINX starts (a test's variant of
   * the shipped one).
   */
  async nginx(gateways, { ipv6 = false, edit } = {}) {
    const nginxBin = tool("nginx");
    const prefix = this.file("nginx");
    fs.mkdirSync(path.join(prefix, "tmp"), { recursive: true });
    fs.chmodSync(prefix, 0o755);
    const gen = spawnSync("sh", [path.join(REPO, "scripts/gen-cert.sh"), prefix], { encoding: "utf8" });
    if (gen.status !== 0) throw new Error(`scripts/gen-cert.sh failed: ${gen.stdout}${gen.stderr}`);
    const httpPort = await freePort({ ipv6 });
    const httpsPort = await freePort();
    const config = path.join(prefix, "nginx.conf");
    const render = (upstreams) => {
      const vars = {
        NGINX_UPSTREAMS: upstreams.join(","),
        NGINX_HTTP_LISTEN: `127.0.0.1:${httpPort}`,
        NGINX_HTTPS_LISTEN: `127.0.0.1:${httpsPort}`,
        NGINX_TLS_CERT: path.join(prefix, "tls.crt"),
        NGINX_TLS_KEY: path.join(prefix, "tls.key"),
        NGINX_PID_FILE: path.join(prefix, "nginx.pid"),
        NGINX_ERROR_LOG: path.join(prefix, "error.log"),
        NGINX_ACCESS_LOG: path.join(prefix, "access.log"),
        NGINX_TEMP_DIR: path.join(prefix, "tmp"),
        NGINX_WORKER_CONNECTIONS: "1024",
        NGINX_WORKER_RLIMIT_NOFILE: "4096",
      };
      const out = spawnSync("bash", [path.join(REPO, "scripts/nginx-conf.sh")], {
        env: { PATH: process.env.PATH, ...vars },
        encoding: "utf8",
      });
      if (out.status !== 0) throw new Error(`scripts/nginx-conf.sh failed: ${out.stdout}${out.stderr}`);
      let text = out.stdout;
      if (ipv6) {
        const line = `listen 127.0.0.1:${httpPort};`;
        if (!text.includes(line)) throw new Error(`the rendered nginx config has no \`${line}\``);
        text = text.replace(line, `${line}\n        listen [::1]:${httpPort};`);
      }
      return edit ? edit(text) : text;
    };
    const check = () => {
      const out = spawnSync(nginxBin, ["-t", "-p", prefix, "-c", config, "-e", path.join(prefix, "error.log")], {
        encoding: "utf8",
      });
      if (out.status !== 0) throw new Error(`nginx -t refused the generated config: ${out.stdout}${out.stderr}`);
    };
    fs.writeFileSync(config, render(gateways.map((g) => g.addr)));
    check();
    const child = this.spawn(
      "nginx",
      nginxBin,
      ["-p", prefix, "-c", config, "-e", path.join(prefix, "error.log"), "-g", "daemon off;"],
      {},
    );
    await eventually(
      async () => {
        if (exited(child)) throw new Error(`nginx exited:\n${tail(path.join(prefix, "error.log"))}`);
        return (
          (await canConnect(httpPort)) &&
          (await canConnect(httpsPort)) &&
          (!ipv6 || (await canConnect(httpPort, "::1")))
        );
      },
      { what: "nginx listening" },
    );
    const nginx = {
      port: httpPort,
      child,
      config,
      accessLog: () => fs.readFileSync(path.join(prefix, "access.log"), "utf8"),
      /**
       * Rewrites the configuration with `edit(text)` and reloads it (SIGHUP):
       * new workers take the new configuration, the old ones keep serving
       * their open connections until those close.
       */
      reload: async (edit) => {
        fs.writeFileSync(config, edit(fs.readFileSync(config, "utf8")));
        check();
        const before = workers(child.pid);
        child.kill("SIGHUP");
        await eventually(() => workers(child.pid).some((pid) => !before.includes(pid)), {
          what: "nginx workers with the reloaded configuration",
        });
      },
      stop: () => stopChild(child, "SIGTERM"),
    };
    return nginx;
  }

  /**
   * A tiny HTTP server on 127.0.0.1 answering `GET <path>` with
   * `handler(url)` (a string body), with CORS open to any origin.
   */
  async httpServer(handler) {
    const server = http.createServer((request, response) => {
      response.setHeader("Access-Control-Allow-Origin", "*");
      response.setHeader("Cache-Control", "no-store");
      if (request.method === "OPTIONS") {
        response.setHeader("Access-Control-Allow-Methods", "GET");
        response.setHeader("Access-Control-Allow-Headers", "*");
        response.writeHead(204).end();
        return;
      }
      try {
        const body = handler(new URL(request.url, "http://x"));
        response.writeHead(200, { "content-type": "text/plain" }).end(body);
      } catch (err) {
        response.writeHead(500, { "content-type": "text/plain" }).end(String(err));
      }
    });
    await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
    this.servers.push(server);
    return { server, port: server.address().port };
  }

  /** Debian's Chromium; Playwright gives it a fresh temp profile. */
  async browser() {
    if (!fs.existsSync(CHROMIUM)) {
      throw new Error(`${CHROMIUM} is missing; run scripts/install-test-deps.sh (Debian package chromium)`);
    }
    const browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS, timeout: 60_000 });
    this.browsers.push(browser);
    return browser;
  }

  /**
   * Opens `url` in a new context of `browser` (a separate "user") and
   * records the page's console errors and exceptions for failure messages.
   * `setup(page)`, when given, runs before the page loads (to listen for
   * its WebSockets from the first).
   */
  async open(browser, url, label = url, { setup } = {}) {
    const context = await browser.newContext({ viewport: { width: 1100, height: 720 } });
    const page = await context.newPage();
    page.label = label;
    page.problems = [];
    page.on("console", (message) => {
      if (message.type() === "error" || message.type() === "warning") {
        page.problems.push(`console.${message.type()}: ${message.text()}`);
      }
    });
    page.on("pageerror", (err) => page.problems.push(`pageerror: ${err.stack || err.message}`));
    this.pages.push(page);
    await setup?.(page);
    await page.goto(url);
    return page;
  }

  /** What the pages and processes said: for a failing test's message. */
  async diagnostics() {
    const parts = [];
    for (const page of this.pages) {
      try {
        parts.push(`--- page ${page.label}: ${JSON.stringify(await snapshot(page), null, 1)}`);
      } catch (err) {
        parts.push(`--- page ${page.label}: (closed: ${err.message})`);
      }
      if (page.problems.length) parts.push(page.problems.join("\n"));
    }
    for (const child of this.children) parts.push(`--- ${child.name} log (tail):\n${tail(child.log, 15)}`);
    return parts.join("\n");
  }

  /** Stops the browsers, servers and processes; removes the temp dir. */
  async close() {
    for (const browser of this.browsers) await browser.close().catch(() => {});
    for (const server of this.servers) {
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
    }
    // NGINX first (no new clients), then the gateways, then Redis.
    const order = (child) => (child.name === "nginx" ? 0 : child.name === "redis" ? 2 : 1);
    for (const child of [...this.children].sort((a, b) => order(a) - order(b))) {
      await stopChild(child, "SIGTERM", 5_000);
    }
    if (!process.env.KEEP_TEST_DIRS) fs.rmSync(this.dir, { recursive: true, force: true });
  }
}

/**
 * Runs `body(h)` with a fresh harness; on failure adds the harness's
 * diagnostics to the error and saves screenshots of its pages under
 * target/browser-test/. Always closes the harness.
 */
export async function withHarness(t, body) {
  const h = new Harness(t.name);
  try {
    await body(h);
  } catch (err) {
    const shots = path.join(REPO, "target/browser-test");
    fs.mkdirSync(shots, { recursive: true });
    for (const [i, page] of h.pages.entries()) {
      await page
        .screenshot({ path: path.join(shots, `${t.name.replace(/\W+/g, "-")}-${i}.png`), timeout: 5_000 })
        .catch(() => {});
    }
    err.message += `\n\n${await h.diagnostics()}`;
    throw err;
  } finally {
    await h.close();
  }
}

// ---- reading the demo page ----------------------------------------------

/** What the demo page shows, read from its data-testid elements. */
export function snapshot(page) {
  return page.evaluate(() => {
    const one = (id) => document.querySelector(`[data-testid="${id}"]`);
    const all = (selector) => [...document.querySelectorAll(selector)];
    return {
      state: one("state").dataset.state,
      stateDetail: one("state-detail").textContent,
      user: one("user").textContent,
      nodeId: one("node-id").textContent,
      connectionId: one("connection-id").textContent,
      transport: one("transport").textContent,
      error: one("error").hidden ? null : { code: one("error").dataset.code, text: one("error").textContent },
      notice: one("notice").hidden ? null : one("notice").textContent,
      recovery: one("recovery").dataset.recovered || null,
      presence: all('[data-testid="member"]').map((el) => el.dataset.user),
      messages: all('[data-testid="message"]').map((el) => ({
        offset: el.dataset.offset === undefined ? null : Number(el.dataset.offset),
        user: el.querySelector('[data-testid="message-user"]').textContent,
        text: el.querySelector('[data-testid="message-text"]').textContent,
      })),
      // Oldest first.
      log: all('[data-testid="log-entry"]')
        .reverse()
        .map((el) => ({
          kind: el.dataset.kind,
          state: el.dataset.state,
          node: el.dataset.node,
          transport: el.dataset.transport,
          format: el.dataset.format,
          text: el.textContent,
        })),
    };
  });
}

/** Waits until the page is connected and knows its node; returns the snapshot. */
export function connected(page, timeout = 15_000) {
  return eventually(
    async () => {
      const shown = await snapshot(page);
      return shown.state === "connected" && shown.nodeId && shown.nodeId !== "–" ? shown : false;
    },
    { timeout, what: `${page.label} connected` },
  );
}

/** Types `text` into the page's input and sends it with Enter. */
export async function say(page, text) {
  await page.getByTestId("input").fill(text);
  await page.getByTestId("input").press("Enter");
}

// ---- process helpers ----------------------------------------------------

/** A program on PATH or in the sbin directories (nginx lives in /usr/sbin). */
export function tool(name) {
  const dirs = [...(process.env.PATH || "").split(":"), "/usr/sbin", "/usr/local/sbin", "/sbin", "/usr/local/bin"];
  for (const dir of dirs) {
    const candidate = path.join(dir, name);
    try {
      fs.accessSync(candidate, fs.constants.X_OK);
      return candidate;
    } catch {
      // next
    }
  }
  throw new Error(`\`${name}\` is not installed; run scripts/install-test-deps.sh`);
}

/** Pids of the direct children of `pid` (NGINX's workers). */
function workers(pid) {
  const found = [];
  for (const entry of fs.readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = fs.readFileSync(`/proc/${entry}/stat`, "utf8");
      // pid (comm) state ppid ...: comm may hold spaces, so split after ')'.
      const ppid = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
      if (ppid === pid) found.push(Number(entry));
    } catch {
      // exited meanwhile
    }
  }
  return found;
}

function redisPing(port) {
  return new Promise((resolve) => {
    const socket = net.connect({ host: "127.0.0.1", port });
    let answer = "";
    socket.setTimeout(1_000, () => {
      socket.destroy();
      resolve(false);
    });
    socket.once("connect", () => socket.write("PING\r\n"));
    socket.on("data", (chunk) => {
      answer += chunk;
      if (answer.includes("\r\n")) {
        socket.destroy();
        resolve(answer.startsWith("+PONG"));
      }
    });
    socket.once("error", () => resolve(false));
  });
}
