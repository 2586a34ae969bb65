// Builds src/vendor/msgpack.js: the MessagePack codec the SDK's
// `format: "msgpack"` uses, bundled from the locked devDependency
// @msgpack/msgpack by esbuild (also a locked devDependency) into one ES
// module with its licence on top. The SDK ships it (package.json "files")
// and imports it relatively, so the package keeps no runtime dependency and
// a page loads nothing from elsewhere.
//
//   npm run vendor          writes the file
//   test/vendor.test.js     fails when the committed file is not what this builds
//
// Only Encoder and Decoder are exported: esbuild drops the rest of the
// package (streams, async decoding, the extension helpers). Not minified,
// so a reviewer can read what ships; an application's bundler minifies it
// with the rest.

import { readFileSync, writeFileSync, mkdirSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
export const SDK_DIR = resolve(here, "..");
export const VENDORED = join(SDK_DIR, "src/vendor/msgpack.js");

const require = createRequire(join(SDK_DIR, "package.json"));

/** The package's own package.json and LICENSE, from node_modules. */
function packageInfo(name) {
  const dir = dirname(require.resolve(`${name}/package.json`));
  const manifest = JSON.parse(readFileSync(join(dir, "package.json"), "utf8"));
  return { dir, version: manifest.version, license: manifest.license };
}

/** The text of src/vendor/msgpack.js as the locked devDependencies build it. */
export async function buildVendoredMsgpack() {
  const esbuild = await import("esbuild");
  const msgpack = packageInfo("@msgpack/msgpack");
  const licence = readFileSync(join(msgpack.dir, "LICENSE"), "utf8").trim();
  const banner = [
    "/*",
    ` * @msgpack/msgpack ${msgpack.version} (${msgpack.license}), its Encoder and Decoder,`,
    ` * bundled into one ES module by esbuild ${esbuild.version} (npm run vendor,`,
    " * scripts/vendor-msgpack.js) from the locked devDependency. Generated: do not edit;",
    " * test/vendor.test.js checks it. The package's licence:",
    " *",
    ...licence.split("\n").map((line) => (line === "" ? " *" : ` * ${line}`)),
    " */",
  ].join("\n");
  const result = await esbuild.build({
    stdin: {
      contents: 'export { Encoder, Decoder } from "@msgpack/msgpack";\n',
      resolveDir: SDK_DIR,
      sourcefile: "msgpack-entry.js",
      loader: "js",
    },
    absWorkingDir: SDK_DIR, // the paths in its comments, wherever it runs from
    bundle: true,
    format: "esm",
    platform: "neutral",
    // The SDK's own language level (it uses ?. and ??, nothing newer).
    target: "es2020",
    mainFields: ["module", "main"],
    banner: { js: banner },
    legalComments: "none",
    charset: "utf8",
    write: false,
    logLevel: "silent",
  });
  return result.outputFiles[0].text;
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const text = await buildVendoredMsgpack();
  mkdirSync(dirname(VENDORED), { recursive: true });
  writeFileSync(VENDORED, text);
  console.log(`wrote ${VENDORED} (${Buffer.byteLength(text)} bytes)`);
}
