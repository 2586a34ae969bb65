#!/usr/bin/env bash
# Runs the JS SDK's tests (sdk/js): the unit and integration tests against a
# real gateway (npm test), the TypeScript declarations check (npm run
# test:types) and the browser tests in headless Chromium (npm run
# test:browser). `make test` runs it after the Rust tests;
# scripts/install-test-deps.sh installs what it needs (node_modules from the
# lockfile, chromium, redis-server, nginx).
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO="${CARGO:-cargo}"

command -v node >/dev/null 2>&1 || {
  echo "test-js: node is missing; install Node.js 20 or later" >&2
  exit 1
}
major="$(node -p 'process.versions.node.split(".")[0]')"
[ "$major" -ge 20 ] || {
  echo "test-js: Node.js $(node --version) is too old; the SDK needs 20 or later" >&2
  exit 1
}
[ -f sdk/js/node_modules/.package-lock.json ] || {
  echo "test-js: sdk/js/node_modules is missing; run scripts/install-test-deps.sh" >&2
  exit 1
}

# The tests start target/debug/switchboard; make test builds it, but make
# sure it is there and current when this runs alone. The same command as
# make test and make run (see DEV_BUILD in the Makefile): a `-p` build
# resolves features differently and would compile the gateway again, and
# leave that other build in target/debug/switchboard.
"$CARGO" build --quiet --workspace --all-targets

# All three run even when one fails, so one run shows every failure.
cd sdk/js
failed=()
for script in test test:types test:browser; do
  echo "test-js: npm run $script" >&2
  npm run --silent "$script" || failed+=("$script")
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "test-js: failed: ${failed[*]}" >&2
  exit 1
fi
