"""What close code Python `websockets` clients see when the server is deployed or stopped.

Usage: ws_close_codes.py PORT N. Opens N clients on ws://127.0.0.1:PORT/ws, prints `ready`,
then waits (at most 60 s) until every connection has ended. Prints one JSON line: a list with,
per client, the close code of the server's close frame (null when the connection ended without
one, which websockets reports as 1006) and how many milliseconds after `ready` it ended. Then,
if the server still answers, a new client checks that a chat line goes round (`"after": true`).
"""
import asyncio
import json
import sys
import time

import websockets


async def watch(ws, started):
    try:
        while True:
            await ws.recv()
    except websockets.ConnectionClosed as e:
        code = e.rcvd.code if e.rcvd is not None else None
        return {"code": code, "after_ms": int((time.monotonic() - started) * 1000)}


async def main(port: int, n: int) -> None:
    url = f"ws://127.0.0.1:{port}/ws"
    clients = [await websockets.connect(url) for _ in range(n)]
    started = time.monotonic()
    print("ready", flush=True)
    results = await asyncio.wait_for(
        asyncio.gather(*(watch(ws, started) for ws in clients)), timeout=60
    )
    after = None
    if len(sys.argv) > 3 and sys.argv[3] == "chat-after":
        async with websockets.connect(url) as a, websockets.connect(url) as b:
            await asyncio.sleep(0.3)
            await a.send("after the deploy")
            got = await asyncio.wait_for(b.recv(), timeout=5)
            after = got.endswith(": after the deploy")
    print(json.dumps({"clients": results, "after": after}), flush=True)


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2])))
