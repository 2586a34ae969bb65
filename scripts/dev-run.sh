#!/usr/bin/env bash
# Starts one development node: in-memory broker, a dev HS256 secret, any
# browser origin, the admin UI with a dev login key, and config/dev.toml
# (join/leave events in `chat:`). Prints a token valid for an hour, how to
# connect with it, and the admin UI's address and key.
#
# It runs the binaries in target/debug, which `make run` builds with the same
# command as `make test` (so a run after the tests compiles nothing). BIN_DIR
# picks another build, e.g. BIN_DIR=target/release after
# `cargo build --release -p switchboard-gateway -p switchboard-client`.
set -euo pipefail
cd "$(dirname "$0")/.."

export SWITCHBOARD_LISTEN="${LISTEN:-127.0.0.1:8080}"
export SWITCHBOARD_JWT_HS256_SECRET="${SWITCHBOARD_JWT_HS256_SECRET:-switchboard-dev-secret-not-for-production}"
export SWITCHBOARD_ALLOWED_ORIGINS="${SWITCHBOARD_ALLOWED_ORIGINS:-*}"
export SWITCHBOARD_NODE_ID="${SWITCHBOARD_NODE_ID:-dev-1}"
export SWITCHBOARD_ADMIN="${SWITCHBOARD_ADMIN:-true}"
export SWITCHBOARD_ADMIN_SECRET="${SWITCHBOARD_ADMIN_SECRET:-switchboard-dev-admin-key}"
bin="${BIN_DIR:-target/debug}"
[ -x "$bin/switchboard" ] || {
  echo "dev-run: $bin/switchboard is missing; run make run (or build it)" >&2
  exit 1
}

token=$("$bin/switchboard" --config config/dev.toml token --user dev --ttl 1h --info '{"name":"Dev"}')
alice=$("$bin/switchboard" --config config/dev.toml token --user alice --ttl 1h --info '{"name":"Alice"}')
bob=$("$bin/switchboard" --config config/dev.toml token --user bob --ttl 1h --info '{"name":"Bob"}')
url="ws://${SWITCHBOARD_LISTEN}/ws?token=${token}"
admin_line=""
if [ "${SWITCHBOARD_ADMIN}" = true ]; then
  admin_line=$'\n'"  admin UI: http://${SWITCHBOARD_LISTEN}/admin/ (login key: ${SWITCHBOARD_ADMIN_SECRET})"$'\n'
fi
cat <<MSG

  Switchboard dev node on http://${SWITCHBOARD_LISTEN}  (in-memory, dev secret; Ctrl-C stops it)
${admin_line}
  Demo chat in the browser (open both, in two tabs or windows):
    alice: http://${SWITCHBOARD_LISTEN}/demo/#token=${alice}
    bob:   http://${SWITCHBOARD_LISTEN}/demo/#token=${bob}

  Token for user "dev", valid 1 hour (may subscribe and publish anywhere):
    ${token}

  Connect from another terminal, then type commands such as
    {"type":"subscribe","channel":"chat:lobby","id":1}
    {"type":"publish","channel":"chat:lobby","data":{"text":"hi"},"id":2}
    {"type":"history","channel":"chat:lobby","limit":10,"id":3}

  Channels keep their last 100 messages for 2 minutes: reconnect and resume
  with the offset and epoch of the last message you saw, e.g.
    {"type":"subscribe","channel":"chat:lobby","since":{"offset":1,"epoch":"<epoch>"},"id":4}

    ${bin}/switchboard-cli '${url}'

  More tokens: SWITCHBOARD_JWT_HS256_SECRET=${SWITCHBOARD_JWT_HS256_SECRET} ${bin}/switchboard token --user alice --channel 'chat:*'

MSG
exec "$bin/switchboard" --config config/dev.toml
