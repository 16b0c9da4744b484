"""permessage-deflate with examples/ws_chat, as Python's `websockets` negotiates it (by default).

Usage: ws_deflate.py PORT LIMIT. Two clients connect; the server must answer the offer; a long
JSON-like message sent compressed reaches the other client whole; then a message that is small
on the wire but inflates past LIMIT bytes closes that client's connection with 1009, and the
other client still chats. Prints the bytes on the wire against the message's length.
Exits non-zero on any failure.
"""
import asyncio
import json
import sys

import websockets


async def main(port: int, limit: int) -> None:
    url = f"ws://127.0.0.1:{port}/ws"
    async with websockets.connect(url) as a, websockets.connect(url) as b:
        answered = a.response.headers.get("Sec-WebSocket-Extensions", "")
        assert answered.startswith("permessage-deflate"), answered
        await asyncio.sleep(0.3)
        rows = [{"user": f"user{i}", "text": "the quick brown fox jumps over the lazy dog",
                 "room": "lobby"} for i in range(40)]
        message = json.dumps(rows)
        await a.send(message)
        got = await asyncio.wait_for(b.recv(), timeout=5)
        assert got.endswith(": " + message), got[:200]
        # The bomb: a few kilobytes compressed, many times the limit inflated.
        async with websockets.connect(url, max_size=None) as c:
            await c.send("a" * (limit * 8))
            try:
                await asyncio.wait_for(c.recv(), timeout=5)
                raise AssertionError("the bomb was not refused")
            except websockets.ConnectionClosed as closed:
                code = closed.rcvd.code if closed.rcvd else None
                assert code == 1009, code
        await a.send("still here")
        got = await asyncio.wait_for(b.recv(), timeout=5)
        assert got.endswith(": still here"), got
    print("python websockets deflate: ok")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2])))
