"""A chat exchange through examples/ws_chat with Python's `websockets` library.

Usage: ws_chat_client.py PORT. Two clients connect to /ws; one sends a line; both must receive
it within 5 seconds. Exits non-zero on any failure.
"""
import asyncio
import sys

import websockets


async def main(port: int) -> None:
    url = f"ws://127.0.0.1:{port}/ws"
    async with websockets.connect(url) as a, websockets.connect(url) as b:
        await asyncio.sleep(0.3)
        await a.send("hello from python")
        for who, ws in (("a", a), ("b", b)):
            got = await asyncio.wait_for(ws.recv(), timeout=5)
            assert got.endswith(": hello from python"), (who, got)
        # A ping is answered with a pong.
        pong = await a.ping()
        await asyncio.wait_for(pong, timeout=5)
    print("python websockets: ok")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
