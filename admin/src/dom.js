// DOM helpers for the admin UI. Every string reaches the page as text:
// `h()` builds elements with createElement and appends strings as text
// nodes, and refuses the properties that would parse HTML. Channel names,
// user ids, presence `info` and message data are all user-controlled, so no
// module of the UI writes markup from data.

const FORBIDDEN = new Set(["innerHTML", "outerHTML", "srcdoc"]);

/**
 * `h("a", { class: "link", href: "#/nodes", testid: "nav" }, "Nodes")`.
 * Props: `class`, `testid` (data-testid), `dataset` (object), `text`,
 * `on<event>` (listener), `value`/`checked`/`disabled`/`hidden` (set as
 * properties), anything else as an attribute (null/false skip it). Children:
 * nodes, strings (as text), numbers, null/false (skipped) or arrays of these.
 */
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (FORBIDDEN.has(key)) throw new Error(`h(): ${key} is not allowed`);
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "testid") el.dataset.testid = value;
    else if (key === "dataset") {
      for (const [name, v] of Object.entries(value)) if (v !== null && v !== undefined) el.dataset[name] = String(v);
    } else if (key === "text") el.textContent = String(value);
    else if (key.startsWith("on") && typeof value === "function") el.addEventListener(key.slice(2), value);
    else if (key === "value" || key === "checked" || key === "disabled" || key === "hidden") el[key] = value;
    else if (key === "href" && !String(value).startsWith("#")) throw new Error("h(): only in-page links");
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else if (child instanceof Node) el.appendChild(child);
    else el.appendChild(document.createTextNode(String(child)));
  }
}

/** Replaces the children of `el` with `children` (as `h` appends them). */
export function replace(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

/** A JSON value as compact text (for `info` and message data). */
export function json(value) {
  return value === undefined ? "" : JSON.stringify(value);
}

/** A JSON value as indented text, for a <pre>. */
export function prettyJson(value) {
  return value === undefined ? "" : JSON.stringify(value, null, 2);
}

/** A link to a page of the UI: `#/channel/<name>` with the name encoded. */
export function link(route, id, label, props = {}) {
  return h("a", { href: `#/${route}/${encodeURIComponent(id)}`, ...props }, label ?? id);
}

/** 3725 -> "1h 02m 05s". */
export function duration(seconds) {
  const s = Math.max(0, Math.floor(Number(seconds) || 0));
  const d = Math.floor(s / 86400);
  const hh = Math.floor((s % 86400) / 3600);
  const mm = Math.floor((s % 3600) / 60);
  const ss = s % 60;
  const two = (n) => String(n).padStart(2, "0");
  if (d) return `${d}d ${hh}h ${two(mm)}m`;
  if (hh) return `${hh}h ${two(mm)}m ${two(ss)}s`;
  if (mm) return `${mm}m ${two(ss)}s`;
  return `${ss}s`;
}

/** Unix seconds -> "2026-12-06 04:31:02" in the browser's time zone. */
export function when(unixSeconds) {
  const date = new Date(Number(unixSeconds) * 1000);
  if (Number.isNaN(date.getTime())) return "–";
  const two = (n) => String(n).padStart(2, "0");
  return `${date.getFullYear()}-${two(date.getMonth() + 1)}-${two(date.getDate())} ${two(date.getHours())}:${two(date.getMinutes())}:${two(date.getSeconds())}`;
}

/** A rate with one decimal, or a whole number when it is one. */
export function rate(value) {
  const n = Number(value) || 0;
  return Number.isInteger(n) ? String(n) : n.toFixed(1);
}

/** A status line: `status(el, "error", "text")`, or `status(el)` to hide it. */
export function status(el, kind, text) {
  if (!text) {
    el.hidden = true;
    el.textContent = "";
    return;
  }
  el.hidden = false;
  el.dataset.kind = kind;
  el.className = `note ${kind}`;
  el.textContent = text;
}
