"""A WebSocket echo server in Python's `websockets`, compression on (its default), for an oxwork
client to talk to.

Usage: ws_deflate_server.py PORT. Each message comes back as "echo: MESSAGE". Runs until
killed.
"""
import asyncio
import sys

import websockets


async def echo(ws) -> None:
    async for message in ws:
        await ws.send("echo: " + message)


async def main(port: int) -> None:
    async with websockets.serve(echo, "127.0.0.1", port, subprotocols=["chat"]):
        print("listening", flush=True)
        await asyncio.Future()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
