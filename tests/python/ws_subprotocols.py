"""Subprotocol negotiation with examples/ws_chat, as Python's `websockets` does it.

Usage: ws_subprotocols.py PORT. A client offering ["superchat", "chat"] must be answered with
"chat"; one offering only ["graphql-ws"] must be let in with no subprotocol; both then chat.
Exits non-zero on any failure.
"""
import asyncio
import sys

import websockets


async def main(port: int) -> None:
    url = f"ws://127.0.0.1:{port}/ws"
    async with websockets.connect(url, subprotocols=["superchat", "chat"]) as a, \
            websockets.connect(url, subprotocols=["graphql-ws"]) as b:
        assert a.subprotocol == "chat", a.subprotocol
        assert b.subprotocol is None, b.subprotocol
        await asyncio.sleep(0.3)
        await a.send("spoken in chat")
        got = await asyncio.wait_for(b.recv(), timeout=5)
        assert got.endswith(": spoken in chat"), got
    print("python websockets subprotocols: ok")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
