#!/bin/bash
# Container health check: GET /healthz on the gateway's own listener and
# succeed on 200. Pure bash (/dev/tcp), so the runtime image needs no curl
# or wget. The port comes from SWITCHBOARD_LISTEN (default 8080), or $1.
set -eu
port="${1:-${SWITCHBOARD_LISTEN:-0.0.0.0:8080}}"
port="${port##*:}"
exec 3<>"/dev/tcp/127.0.0.1/${port}"
printf 'GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n' >&3
IFS= read -r -t 2 status <&3
exec 3<&-
case "$status" in
  "HTTP/1.1 200"*) exit 0 ;;
  *) echo "healthz: ${status:-no answer}" >&2; exit 1 ;;
esac
