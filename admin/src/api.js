// The node's admin API (docs/operations.md, "The admin UI"): JSON over
// fetch on the page's own origin, with the session cookie the node set at
// login (HttpOnly: this code never sees it) and the CSRF token from
// `GET /admin/api/session` on every state-changing request. A 401 from any
// call means the session is gone (expired, logged out, key changed): the
// handler registered with `onUnauthorized` takes the UI back to the login.

const BASE = "/admin";

let csrf = null;
let unauthorized = () => {};

/** An answer other than 2xx: the server's `error` code and `message`. */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
  }
}

/** `handler(error)` runs on every 401 of a call made while logged in. */
export function onUnauthorized(handler) {
  unauthorized = handler;
}

export function loggedIn() {
  return csrf !== null;
}

async function call(method, path, body, { quiet401 = false } = {}) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET" && csrf) headers["X-CSRF-Token"] = csrf;
  let response;
  try {
    response = await fetch(BASE + path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "same-origin",
      cache: "no-store",
      redirect: "error",
    });
  } catch (err) {
    throw new ApiError(0, "network", `the node did not answer (${err.message})`);
  }
  const text = await response.text();
  let parsed = null;
  if (text) {
    try {
      parsed = JSON.parse(text);
    } catch {
      parsed = null;
    }
  }
  if (!response.ok) {
    const code = parsed && typeof parsed.error === "string" ? parsed.error : `http_${response.status}`;
    const message =
      parsed && typeof parsed.message === "string" ? parsed.message : `${response.status} ${response.statusText}`.trim();
    const error = new ApiError(response.status, code, message);
    if (response.status === 401 && !quiet401) {
      csrf = null;
      unauthorized(error);
    }
    throw error;
  }
  return parsed;
}

const query = (params) => {
  const search = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== "") search.set(key, String(value));
  }
  const text = search.toString();
  return text ? `?${text}` : "";
};

/** Exchanges the admin key for the session cookie, then fetches the CSRF token. */
export async function login(key) {
  await call("POST", "/login", { key }, { quiet401: true });
  return session();
}

/** `{csrf, expires_in}` for the current cookie; 401 without one. */
export async function session({ quiet401 = false } = {}) {
  const answer = await call("GET", "/api/session", undefined, { quiet401 });
  csrf = answer.csrf;
  return answer;
}

export async function logout() {
  try {
    await call("POST", "/logout", undefined, { quiet401: true });
  } finally {
    csrf = null;
  }
}

export const nodes = () => call("GET", "/api/nodes");
export const channels = ({ prefix, cursor, limit }) => call("GET", `/api/channels${query({ prefix, cursor, limit })}`);
export const channel = (name) => call("GET", `/api/channel${query({ name })}`);
export const publish = (channelName, data) => call("POST", "/api/publish", { channel: channelName, data });
export const user = (id) => call("GET", `/api/user${query({ id })}`);
export const disconnect = (id, code, reason) => call("POST", "/api/disconnect", { user: id, code, reason });

/** The live tail's URL (an EventSource on the same origin sends the cookie). */
export const tailUrl = (name) => `${BASE}/api/tail${query({ channel: name })}`;
