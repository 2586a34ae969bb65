#!/usr/bin/env bash
# Installs the programs the test suite starts or calls for real (Debian):
# redis-server and nginx for the integration tests (openssl for their TLS
# certificate), promtool to lint the
# metrics exposition and alert rules, docker-compose to validate the compose
# file without an engine, and kubernetes-validate (PyPI) to check the
# Kubernetes manifests offline. Idempotent: does nothing when everything is
# present. Needs root or sudo only when something is missing.
set -euo pipefail

# command -> Debian package
declare -A needed=(
  [redis-server]=redis-server
  [nginx]=nginx
  [promtool]=prometheus
  [docker-compose]=docker-compose
  [openssl]=openssl
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
    for svc in redis-server nginx prometheus; do
      $sudo systemctl disable --now "$svc" >/dev/null 2>&1 || true
    done
  fi
  # Without systemd the packages' init scripts may still have started them.
  for svc in redis-server nginx prometheus; do
    $sudo service "$svc" stop >/dev/null 2>&1 || true
  done
fi

if ! command -v kubernetes-validate >/dev/null 2>&1; then
  echo "install-test-deps: installing kubernetes-validate (PyPI)" >&2
  python3 -m pip install --quiet --disable-pip-version-check 'kubernetes-validate>=1.31' >&2
  command -v pyenv >/dev/null 2>&1 && pyenv rehash || true
fi
