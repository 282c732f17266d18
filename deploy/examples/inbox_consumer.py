#!/usr/bin/env python3
"""Consume turnout's backend inbox: what clients publish, for a backend to
store or moderate without being in the delivery path.

    pip install redis
    TURNOUT_INBOX=true ...                      # on every ws-node
    python3 deploy/examples/inbox_consumer.py redis://127.0.0.1:6390 archive.jsonl

Runs as one consumer of the consumer group "archiver" (start several with
--consumer to share the work). Each entry is appended to the output file as
one JSON line, then acknowledged: a consumer that crashes before XACK gets
its entries again at restart (it reads its pending list first), so nothing
is lost, and a line may repeat — dedupe on (room, seq).
"""
import argparse
import json

import redis

STREAM = "turnout:inbox"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("redis_url")
    p.add_argument("out", help="file to append JSON lines to")
    p.add_argument("--group", default="archiver")
    p.add_argument("--consumer", default="archiver-1")
    args = p.parse_args()

    r = redis.Redis.from_url(args.redis_url, decode_responses=True)
    try:
        # "$": only what arrives from now on; use "0" to take the whole stream.
        r.xgroup_create(STREAM, args.group, id="$", mkstream=True)
    except redis.ResponseError as e:
        if "BUSYGROUP" not in str(e):
            raise

    start = "0"  # first our own pending entries (delivered, never acked), then new ones
    with open(args.out, "a", encoding="utf-8") as out:
        while True:
            reply = r.xreadgroup(args.group, args.consumer, {STREAM: start}, count=100, block=5000)
            entries = reply[0][1] if reply else []
            if start == "0" and not entries:
                start = ">"
                continue
            for entry_id, fields in entries:
                message = json.loads(fields["message"])
                out.write(json.dumps({"room": fields["room"], "seq": int(fields["seq"]),
                                      "user": fields["user"], "data": message["data"],
                                      "ts": message["ts"]}) + "\n")
                out.flush()
                r.xack(STREAM, args.group, entry_id)
                print(f"{fields['room']}#{fields['seq']} from {fields['user']}")


if __name__ == "__main__":
    main()
