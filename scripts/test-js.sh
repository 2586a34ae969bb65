#!/usr/bin/env bash
# Runs the JS tests: the SDK's (sdk/js: the unit and integration tests
# against a real gateway (npm test), the TypeScript declarations check (npm
# run test:types) and the browser tests in headless Chromium (npm run
# test:browser)), then the admin UI's (admin/: dist/ built from src/ (npm
# test) and its browser tests against real nodes (npm run test:browser),
# which reuse the SDK's browser-test harness). `make test` runs it after the
# Rust tests; scripts/install-test-deps.sh installs what it needs (both
# node_modules from their lockfiles, chromium, redis-server, nginx).
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
for dir in sdk/js admin; do
  [ -f "$dir/node_modules/.package-lock.json" ] || {
    echo "test-js: $dir/node_modules is missing; run scripts/install-test-deps.sh" >&2
    exit 1
  }
done

# The tests start target/debug/switchboard; make test builds it, but make
# sure it is there and current when this runs alone. The same command as
# make test and make run (see DEV_BUILD in the Makefile): a `-p` build
# resolves features differently and would compile the gateway again, and
# leave that other build in target/debug/switchboard.
"$CARGO" build --quiet --workspace --all-targets

# Every suite runs even when one fails, so one run shows every failure.
failed=()
run() {
  local dir="$1" script="$2"
  echo "test-js: npm run $script (in $dir)" >&2
  (cd "$dir" && npm run --silent "$script") || failed+=("$dir: $script")
}
for script in test test:types test:browser; do
  run sdk/js "$script"
done
for script in test test:browser; do
  run admin "$script"
done
if [ ${#failed[@]} -gt 0 ]; then
  printf 'test-js: failed: %s\n' "${failed[@]}" >&2
  exit 1
fi
