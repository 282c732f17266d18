#!/usr/bin/env python3
"""A tiny turnout client: join a room, print what arrives, publish what you type.

    pip install websockets
    python3 deploy/examples/chat.py ws://127.0.0.1:8080/ws lobby alice

It keeps the last seq it saw and, when the connection drops, reconnects and
joins with "since" so nothing that history holds is missed.
"""
import asyncio
import json
import random
import sys

import websockets


async def main(url: str, room: str, user: str) -> None:
    last_seq = None
    backoff = 0.5
    while True:
        try:
            async with websockets.connect(f"{url}?room={room}&user={user}") as ws:
                welcome = json.loads(await ws.recv())
                print(f"* connected to {welcome['node']} ({welcome['strategy']})")
                join = {"type": "join", "room": room}
                if last_seq is not None:
                    join["since"] = last_seq
                await ws.send(json.dumps(join))
                backoff = 0.5

                async def typing() -> None:
                    loop = asyncio.get_running_loop()
                    while True:
                        line = await loop.run_in_executor(None, sys.stdin.readline)
                        if not line:
                            return
                        await ws.send(json.dumps({"type": "publish", "room": room, "data": {"text": line.rstrip()}}))

                typer = asyncio.create_task(typing())
                try:
                    async for raw in ws:
                        frame = json.loads(raw)
                        kind = frame["type"]
                        if kind == "joined":
                            print(f"* joined {room} at seq {frame['seq']}, present: {', '.join(frame['presence'])}")
                            if frame.get("recovered") is False:
                                print("* some missed messages are no longer in history")
                            if last_seq is None:
                                last_seq = frame["seq"]  # with "since", the replay follows
                        elif kind == "message":
                            if last_seq is not None and frame["seq"] > last_seq + 1:
                                print(f"* gap: {last_seq + 1}..{frame['seq'] - 1} missing")
                            last_seq = frame["seq"]
                            print(f"[{frame['seq']}] {frame['from']}@{frame['node']}: {json.dumps(frame['data'])}")
                        elif kind == "reconnect":
                            print(f"* server asks to reconnect: {frame['reason']}")
                        elif kind == "error":
                            print(f"* error {frame['code']}: {frame['message']}")
                finally:
                    typer.cancel()
        except (OSError, websockets.WebSocketException) as e:
            print(f"* disconnected ({e}); reconnecting")
        await asyncio.sleep(backoff + random.random() * backoff)
        backoff = min(backoff * 2, 5)


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    asyncio.run(main(*sys.argv[1:]))
