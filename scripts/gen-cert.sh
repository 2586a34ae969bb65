#!/bin/sh
# Makes a self-signed TLS certificate and key for local use of the NGINX
# front: DIR/tls.crt and DIR/tls.key (default DIR: nginx/certs), valid for
# localhost and 127.0.0.1 for 365 days, EC P-256. Does nothing when both
# files already exist (so a real certificate put there is never replaced);
# --force makes a new pair. POSIX sh, so the docker-compose `certs` service
# can run it in a plain Alpine container.
#
# Usage: scripts/gen-cert.sh [--force] [DIR] [EXTRA_HOSTNAME...]
set -eu

force=0
if [ "${1:-}" = "--force" ]; then
  force=1
  shift
fi
dir="${1:-$(dirname "$0")/../nginx/certs}"
[ $# -gt 0 ] && shift

if [ "$force" -eq 0 ] && [ -s "$dir/tls.crt" ] && [ -s "$dir/tls.key" ]; then
  echo "gen-cert: $dir/tls.crt exists; keeping it (--force replaces it)" >&2
  exit 0
fi
command -v openssl >/dev/null 2>&1 || {
  echo "gen-cert: openssl is needed (apt-get install openssl)" >&2
  exit 2
}

san="DNS:localhost,IP:127.0.0.1,IP:::1"
for host in "$@"; do
  san="$san,DNS:$host"
done

mkdir -p "$dir"
umask 077
openssl req -x509 -nodes -days 365 \
  -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
  -subj "/CN=localhost/O=Switchboard local" \
  -addext "subjectAltName=$san" \
  -keyout "$dir/tls.key.tmp" -out "$dir/tls.crt.tmp" 2>/dev/null
# NGINX's master reads the pair as root in containers; the certificate is public.
chmod 644 "$dir/tls.crt.tmp"
chmod 600 "$dir/tls.key.tmp"
mv "$dir/tls.key.tmp" "$dir/tls.key"
mv "$dir/tls.crt.tmp" "$dir/tls.crt"
echo "gen-cert: wrote $dir/tls.crt and $dir/tls.key (self-signed, for local use only)" >&2
