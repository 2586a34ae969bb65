#!/usr/bin/env bash
# Installs the system packages the test suite starts for real (Debian).
# Idempotent: does nothing when everything is present. Needs root or sudo
# only when something is missing.
set -euo pipefail

# command -> Debian package
declare -A needed=(
  [redis-server]=redis-server
)

missing=()
for cmd in "${!needed[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${needed[$cmd]}")
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "install-test-deps: installing ${missing[*]}" >&2
sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# Debian starts packaged services; the tests start their own on free ports.
if command -v systemctl >/dev/null 2>&1; then
  $sudo systemctl disable --now redis-server >/dev/null 2>&1 || true
fi
