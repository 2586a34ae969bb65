// The committed admin/dist/ is what a fresh build of admin/src/ produces:
// the gateway embeds dist/, so a change to src/ without `npm run build`
// would ship the old UI.

import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as path from "node:path";
import { test } from "node:test";

import { DIST, SRC, stale } from "../scripts/build.js";

test("admin/dist is built from the current admin/src", async () => {
  assert.deepEqual(await stale(), [], "run `npm run build` in admin/ and commit dist/");
});

test("the page loads one script and one stylesheet, both its own, and nothing inline", () => {
  const html = fs.readFileSync(path.join(DIST, "index.html"), "utf8");
  const scripts = [...html.matchAll(/<script\b([^>]*)>([\s\S]*?)<\/script>/gi)];
  assert.equal(scripts.length, 1, "one <script>");
  assert.match(scripts[0][1], /\bsrc="app\.js"/, "the script is app.js");
  assert.equal(scripts[0][2].trim(), "", "the script element has no inline code");
  const sheets = [...html.matchAll(/<link\b[^>]*rel="stylesheet"[^>]*>/gi)];
  assert.equal(sheets.length, 1, "one stylesheet");
  assert.match(sheets[0][0], /href="app\.css"/);
  assert.doesNotMatch(html, /<style\b/i, "no <style> element");
  assert.doesNotMatch(html, /\sstyle=/i, "no style attribute");
  assert.doesNotMatch(html, /\son[a-z]+=/i, "no inline event handler");
  assert.doesNotMatch(html, /(src|href)="(https?:)?\/\//i, "nothing from another host");
});

test("no source module writes markup or evaluates strings", () => {
  const files = [];
  const walk = (dir) => {
    for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
      const file = path.join(dir, entry.name);
      if (entry.isDirectory()) walk(file);
      else if (entry.name.endsWith(".js")) files.push(file);
    }
  };
  walk(SRC);
  assert.ok(files.length >= 5, `found the modules: ${files}`);
  const banned = [
    [/\.innerHTML\s*=/, "innerHTML ="],
    [/\.outerHTML\s*=/, "outerHTML ="],
    [/insertAdjacentHTML/, "insertAdjacentHTML"],
    [/document\.write/, "document.write"],
    [/\beval\s*\(/, "eval("],
    [/new\s+Function\s*\(/, "new Function("],
    [/setTimeout\(\s*["'`]/, "setTimeout with a string"],
    [/\.style\./, "inline styles"],
  ];
  for (const file of files) {
    const text = fs.readFileSync(file, "utf8");
    for (const [pattern, what] of banned) {
      assert.doesNotMatch(text, pattern, `${path.relative(SRC, file)} uses ${what}`);
    }
  }
});
