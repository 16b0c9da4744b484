"""A program in another language on the oxwork bus over NATS, with nothing but `nats-py` and
the documented layout (docs/wire.md): it publishes to a channel that a client of the echo
tree watches, and submits a task to the `square` pool of the pool_lab tree and reads its
result.

Usage: nats_interop.py NATS_URL ECHO_PORT
"""

import asyncio
import sys

import nats


async def channel(nc, echo_port):
    reader, writer = await asyncio.open_connection("127.0.0.1", echo_port)
    writer.write(b"watch:news.>\n")
    await writer.drain()
    assert (await reader.readline()).strip() == b"ok"
    # The watch is in place once the echo process's subscription reaches NATS: publish until
    # a copy arrives.
    for _ in range(50):
        await nc.publish("ox.ch.news.python", b"hello from python")
        try:
            line = await asyncio.wait_for(reader.readline(), 0.2)
        except asyncio.TimeoutError:
            continue
        assert line.strip() == b"news.python: hello from python", line
        writer.close()
        return
    raise AssertionError("the channel message never reached the watching client")


async def task(nc):
    inbox = nc.new_inbox()
    results = asyncio.Queue()

    async def on_result(msg):
        # A result asks for a receipt; without it the pool would deliver it again.
        if msg.reply and msg.headers and "ox-receipt" in msg.headers:
            await msg.respond(b"")
        await results.put(msg)

    await nc.subscribe(inbox, cb=on_result)
    js = nc.jetstream()
    for _ in range(50):
        try:
            await js.publish("ox.task.square", b"7", headers={"ox-reply": inbox})
            break
        except Exception:  # the pool's stream is made when its processes join
            await asyncio.sleep(0.1)
    else:
        raise AssertionError("the task stream never appeared")
    msg = await asyncio.wait_for(results.get(), 10)
    assert msg.headers.get("status") == "ok", msg.headers
    assert msg.data == b"49", msg.data


async def main(url, echo_port):
    nc = await nats.connect(url)
    await channel(nc, echo_port)
    await task(nc)
    await nc.drain()
    print("python nats: ok")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
