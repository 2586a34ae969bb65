#!/usr/bin/env bash
# Installs the programs the test suite starts or calls for real (Debian):
# redis-server, redis-sentinel and nginx for the integration tests (openssl
# for their TLS certificates), promtool to lint the
# metrics exposition and alert rules, python3 for scripts/check-layers.py
# (make layers), kubernetes-validate and the webhook verification snippets
# of docs/protocol.md, docker-compose to validate the compose
# file without an engine, kubernetes-validate (PyPI) to check the
# Kubernetes manifests offline, chromium for the browser tests (the JS
# SDK's and the admin UI's), and the npm dev dependencies from their
# lockfiles: the SDK's (playwright-core, typescript, and @msgpack/msgpack
# with esbuild for its vendored codec's check) and the admin UI's (esbuild).
# Idempotent: does nothing when everything is present. Needs root or sudo
# only when a system package is missing; needs Node 20+ and npm.
set -euo pipefail

# command -> Debian package
declare -A needed=(
  [redis-server]=redis-server
  [redis-sentinel]=redis-sentinel
  [nginx]=nginx
  [promtool]=prometheus
  [docker-compose]=docker-compose
  [openssl]=openssl
  [chromium]=chromium
  [python3]=python3
)

missing=()
for cmd in "${!needed[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || missing+=("${needed[$cmd]}")
done

sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"

if [ ${#missing[@]} -gt 0 ]; then
  echo "install-test-deps: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # Debian starts packaged services; the tests start their own on free ports.
  if command -v systemctl >/dev/null 2>&1; then
    for svc in redis-server redis-sentinel nginx prometheus; do
      $sudo systemctl disable --now "$svc" >/dev/null 2>&1 || true
    done
  fi
  # Without systemd the packages' init scripts may still have started them.
  for svc in redis-server redis-sentinel nginx prometheus; do
    $sudo service "$svc" stop >/dev/null 2>&1 || true
  done
fi

if ! command -v kubernetes-validate >/dev/null 2>&1; then
  echo "install-test-deps: installing kubernetes-validate (PyPI)" >&2
  python3 -m pip install --quiet --disable-pip-version-check 'kubernetes-validate>=1.31' >&2
  command -v pyenv >/dev/null 2>&1 && pyenv rehash || true
fi

# The JS SDK's dev dependencies, exactly as locked (playwright-core drives the
# system's chromium; it never downloads a browser). `npm ci` replaces
# node_modules, so it runs only when node_modules is missing or older than
# the lockfile (npm writes node_modules/.package-lock.json on every install).
# The admin UI's (admin/: esbuild, which builds and checks dist/) likewise.
root="$(dirname "$0")/.."
for pkg in "$root/sdk/js" "$root/admin"; do
  if [ ! -f "$pkg/node_modules/.package-lock.json" ] \
    || [ "$pkg/package-lock.json" -nt "$pkg/node_modules/.package-lock.json" ]; then
    command -v npm >/dev/null 2>&1 || {
      echo "install-test-deps: npm is missing; install Node.js 20 or later with npm" >&2
      exit 1
    }
    echo "install-test-deps: installing the dev dependencies of ${pkg#"$root/"} (npm ci)" >&2
    (cd "$pkg" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error >&2)
  fi
done
