#!/usr/bin/env python3
"""An application backend for turnout's hooks, with the standard library only.

    python3 deploy/examples/backend.py --port 8090

Point the ws-nodes at it and give a namespace the join and publish hooks:

    TURNOUT_PROXY_CONNECT_URL=http://127.0.0.1:8090/connect
    TURNOUT_PROXY_JOIN_URL=http://127.0.0.1:8090/join
    TURNOUT_PROXY_PUBLISH_URL=http://127.0.0.1:8090/publish
    TURNOUT_PROXY_RPC_URL=http://127.0.0.1:8090/rpc

    # turnout.toml
    [namespaces.moderated]
    join_proxy = true
    publish_proxy = true

What it decides (docs/BACKEND.md has the whole exchange):
- connect: users named in --banned are refused (close 4403); everyone else
  is let in, with a greeting attached to their `welcome`;
- join: rooms `moderated:staff…` only for users whose id starts with
  `staff`;
- publish: in `moderated:` rooms a message is `{"text": "..."}` of at most
  500 characters; one with a blocked word is refused (error `rejected`, not
  stored); the rest is stored as `{"text": ..., "moderated": true}`;
- rpc: `whoami` (your user id), `echo` (your data back), `time` (the
  backend's clock in ms); any other method is refused;
- webhooks (TURNOUT_WEBHOOK_URL=http://127.0.0.1:8090/webhook, with the
  same secret as --webhook-secret): checks each batch's signature, drops
  events it has seen (by id: delivery is at least once) and prints the rest.

Each answer is `{"result": {...}}` or `{"error": {"code": N, "message": "..."}}`.
"""
import argparse
import hashlib
import hmac
import json
import sys
import threading
import time
from collections import OrderedDict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BLOCKED = {"spam", "scam", "badword"}
MAX_TEXT = 500
SEEN = 100_000


def refuse(code, message):
    return {"error": {"code": code, "message": message}}


def connect(req, banned):
    user = req.get("user", "")
    if user in banned:
        return refuse(4403, f"{user} may not connect")
    return {"result": {"data": {"greeting": f"hello {user}, from the backend"}}}


def join(req):
    room, user = req.get("room", ""), req.get("user", "")
    if room.startswith("moderated:staff") and not user.startswith("staff"):
        return refuse(403, "staff rooms are for staff")
    return {"result": {}}


def publish(req):
    data = req.get("data")
    if not isinstance(data, dict) or not isinstance(data.get("text"), str):
        return refuse(400, 'a message here is {"text": "..."}')
    text = data["text"].strip()
    if not text or len(text) > MAX_TEXT:
        return refuse(400, f"text must be 1 to {MAX_TEXT} characters")
    if BLOCKED & {w.strip(".,!?").lower() for w in text.split()}:
        return refuse(451, "message refused by moderation")
    return {"result": {"data": {"text": text, "moderated": True}}}


def rpc(req):
    method = req.get("method")
    if method == "whoami":
        return {"result": {"data": {"user": req.get("user")}}}
    if method == "echo":
        return {"result": {"data": req.get("data")}}
    if method == "time":
        return {"result": {"data": {"ms": int(time.time() * 1000)}}}
    return refuse(404, f"no method {method!r}")


def signed(body, header, secret):
    want = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(want, header or "")


class Handler(BaseHTTPRequestHandler):
    banned = frozenset()
    webhook_secret = None
    # The last SEEN event ids, to drop redeliveries (bounded: a demo runs
    # for days).
    seen = OrderedDict()
    seen_lock = threading.Lock()
    server_version = "turnout-example-backend"

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length > 1 << 20:
            self.send_error(413)
            return
        body = self.rfile.read(length)
        if self.path == "/webhook":
            self.webhook(body)
            return
        try:
            req = json.loads(body or b"{}")
        except json.JSONDecodeError:
            self.send_error(400, "not JSON")
            return
        hooks = {
            "/connect": lambda r: connect(r, self.banned),
            "/join": join,
            "/publish": publish,
            "/rpc": rpc,
        }
        hook = hooks.get(self.path)
        if hook is None:
            self.send_error(404)
            return
        body = json.dumps(hook(req)).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def webhook(self, body):
        if self.webhook_secret and not signed(body, self.headers.get("X-Turnout-Signature"), self.webhook_secret):
            self.send_error(401, "bad signature")
            return
        for event in json.loads(body).get("events", []):
            with self.seen_lock:
                if event["id"] in self.seen:
                    continue
                self.seen[event["id"]] = None
                if len(self.seen) > SEEN:
                    self.seen.popitem(last=False)
            print(f"webhook: {event['kind']} {event['room']} {event['user']}", flush=True)
        self.send_response(204)
        self.end_headers()

    def do_GET(self):
        # A health check for whoever starts it.
        if self.path == "/healthz":
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")
        else:
            self.send_error(404)

    def log_message(self, fmt, *args):
        sys.stderr.write("backend: " + fmt % args + "\n")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8090)
    p.add_argument("--banned", default="mallory", help="comma-separated user ids refused at connect")
    p.add_argument("--webhook-secret", help="the nodes' webhook_secret: batches without its signature are refused")
    args = p.parse_args()
    Handler.banned = frozenset(u for u in args.banned.split(",") if u)
    Handler.webhook_secret = args.webhook_secret
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    print(f"backend: listening on http://{args.host}:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
