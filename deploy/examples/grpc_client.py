#!/usr/bin/env python3
"""Drive turnout from Python over gRPC, with stubs generated from proto/.

    pip install grpcio-tools
    python3 -m grpc_tools.protoc -I proto/proto --python_out=gen --grpc_python_out=gen \
        turnout/v1/turnout.proto
    python3 deploy/examples/grpc_client.py --gen gen 127.0.0.1:8080 lobby

It subscribes to the room (resuming after --since when given), publishes
--count messages, reads them back from history, and prints what the
subscription delivered. Exits non-zero if the subscription missed or
reordered anything. Pass --api-key when the gateway has one.
"""
import argparse
import json
import sys
import threading


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("gateway", help="host:port of a turnout gateway")
    p.add_argument("room")
    p.add_argument("--gen", default="gen", help="directory with the generated stubs")
    p.add_argument("--api-key", default=None)
    p.add_argument("--count", type=int, default=3)
    p.add_argument("--since", type=int, default=0, help="resume the subscription after this seq")
    args = p.parse_args()

    sys.path.insert(0, args.gen)
    import grpc
    from turnout.v1 import turnout_pb2 as pb
    from turnout.v1 import turnout_pb2_grpc as rpc

    lock = threading.Lock()

    def say(line: str) -> None:
        with lock:
            print(line, flush=True)

    metadata = [("x-api-key", args.api_key)] if args.api_key else []
    channel = grpc.insecure_channel(args.gateway)
    gw = rpc.GatewayStub(channel)

    cluster = gw.Cluster(pb.ClusterRequest(), metadata=metadata)
    print(f"cluster: {cluster.strategy}, nodes: {[n.id for n in cluster.nodes]}")

    # Where the room stands now, so we know which seqs our publishes get.
    before = gw.History(pb.HistoryRequest(room=args.room, since=0, limit=1), metadata=metadata).seq
    since = args.since or before
    stream = gw.Subscribe(pb.SubscribeRequest(room=args.room, since=since), metadata=metadata)
    received = []
    want_last = before + args.count

    def follow() -> None:
        try:
            for m in stream:
                received.append(m.seq)
                sender = getattr(m, "from")  # `from` is a Python keyword
                say(f"subscribe: seq {m.seq} from {sender}: {m.data_json}")
                if m.seq >= want_last:
                    break
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.CANCELLED:
                print(f"subscribe ended: {e.code()} {e.details()}", file=sys.stderr)

    reader = threading.Thread(target=follow)
    reader.start()

    seqs = []
    for i in range(args.count):
        data = json.dumps({"text": f"hello {i} from python"})
        reply = gw.Publish(pb.PublishRequest(room=args.room, data_json=data, **{"from": "python"}),
                           metadata=metadata)
        seqs.append(reply.seq)
        say(f"publish: seq {reply.seq}")

    history = gw.History(pb.HistoryRequest(room=args.room, since=before, limit=100), metadata=metadata)
    print(f"history: seqs {[m.seq for m in history.messages]}, complete={history.complete}")

    reader.join(timeout=10)
    stream.cancel()
    expected = list(range(since + 1, want_last + 1))
    if received != expected or [m.seq for m in history.messages] != seqs:
        print(f"MISMATCH: subscribed {received}, expected {expected}; history vs publish {seqs}",
              file=sys.stderr)
        return 1
    print(f"ok: {len(received)} messages subscribed, in order, none missing")
    return 0


if __name__ == "__main__":
    sys.exit(main())
