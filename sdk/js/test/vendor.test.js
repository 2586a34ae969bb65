// The vendored MessagePack codec (src/vendor/msgpack.js) is exactly what
// `npm run vendor` builds from the locked devDependencies: nobody edited it
// by hand, and a version bump of @msgpack/msgpack or esbuild in the
// lockfile without re-running the script fails here. Also checks that the
// package ships it and keeps no runtime dependency.

import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { buildVendoredMsgpack, SDK_DIR, VENDORED } from "../scripts/vendor-msgpack.js";

test("src/vendor/msgpack.js is what npm run vendor builds from the locked devDependency", async () => {
  const committed = readFileSync(VENDORED, "utf8");
  const built = await buildVendoredMsgpack();
  assert.ok(
    committed === built,
    "src/vendor/msgpack.js differs from what scripts/vendor-msgpack.js builds: run `npm run vendor` in sdk/js and commit the result",
  );
  const lock = JSON.parse(readFileSync(join(SDK_DIR, "package-lock.json"), "utf8"));
  const locked = lock.packages["node_modules/@msgpack/msgpack"].version;
  assert.match(committed, new RegExp(`^/\\*\\n \\* @msgpack/msgpack ${locked.replaceAll(".", "\\.")} \\(ISC\\)`));
  assert.match(committed, /Copyright 2019 The MessagePack Community/);
});

test("the package ships the vendored codec and has no runtime dependency", () => {
  const manifest = JSON.parse(readFileSync(join(SDK_DIR, "package.json"), "utf8"));
  assert.equal(manifest.dependencies, undefined, "the SDK must keep zero runtime dependencies");
  assert.equal(manifest.peerDependencies, undefined);
  // What `npm publish` would pack (read locally, nothing is sent).
  const packed = execFileSync("npm", ["pack", "--dry-run", "--json", "--ignore-scripts"], { cwd: SDK_DIR, encoding: "utf8" });
  const files = JSON.parse(packed)[0].files.map((f) => f.path);
  for (const file of ["src/switchboard.js", "src/switchboard.d.ts", "src/vendor/msgpack.js"]) {
    assert.ok(files.includes(file), `the package must ship ${file}; it packs ${files.join(", ")}`);
  }
  const sdk = readFileSync(join(SDK_DIR, "src/switchboard.js"), "utf8");
  assert.match(sdk, /from "\.\/vendor\/msgpack\.js"/, "the SDK imports the vendored file relatively");
  assert.doesNotMatch(sdk, /from "@msgpack\//, "the SDK must not import the npm package at run time");
});
