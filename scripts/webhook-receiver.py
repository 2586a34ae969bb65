#!/usr/bin/env python3
"""A webhook receiver for trying Switchboard's webhooks by hand and for
`make bench` (scenario 5, a slow backend): verifies each request's
signature as docs/protocol.md describes, prints the events (or only counts
them), and answers 204 after an optional delay.

    scripts/webhook-receiver.py --port 9000 --secret "$SWITCHBOARD_BACKEND_SECRET"
    scripts/webhook-receiver.py --port 9000 --secret ... --delay 2 --quiet --count-file /tmp/n

Standard library only. Listens on 127.0.0.1.
"""

import argparse
import hashlib
import hmac
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def verify(secret: bytes, header: str, body: bytes, tolerance: int = 300) -> bool:
    parts = [p.split("=", 1) for p in header.split(",") if "=" in p]
    stamps = [v for k, v in parts if k.strip() == "t"]
    tags = [v for k, v in parts if k.strip() == "v1"]
    if not stamps or not tags or not stamps[0].isdigit():
        return False
    if abs(time.time() - int(stamps[0])) > tolerance:
        return False
    expected = hmac.new(secret, stamps[0].encode() + b"." + body, hashlib.sha256).hexdigest()
    return any(hmac.compare_digest(expected, tag) for tag in tags)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--secret", required=True, help="the gateways' backend_secret")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds to wait before answering")
    parser.add_argument("--quiet", action="store_true", help="count events, do not print them")
    parser.add_argument("--count-file", help="keep the number of events received in this file")
    args = parser.parse_args()
    secret = args.secret.encode()
    lock = threading.Lock()
    received = {"events": 0, "requests": 0, "refused": 0}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (the http.server name)
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if not verify(secret, self.headers.get("X-Switchboard-Signature", ""), body):
                with lock:
                    received["refused"] += 1
                self.send_response(401)
                self.end_headers()
                print("refused: bad signature", file=sys.stderr, flush=True)
                return
            events = json.loads(body)["events"]
            time.sleep(args.delay)
            with lock:
                received["events"] += len(events)
                received["requests"] += 1
                if args.count_file:
                    with open(args.count_file, "w") as out:
                        out.write(f"{received['events']}\n")
            if not args.quiet:
                for event in events:
                    print(json.dumps(event), flush=True)
            self.send_response(204)
            self.end_headers()

        def log_message(self, *_: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    print(f"listening on http://127.0.0.1:{args.port}/", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
