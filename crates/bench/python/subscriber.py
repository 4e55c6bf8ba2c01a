"""A minimal nats-py queue group member, for `bench` to compare with the Rust `worker`.

Usage: subscriber.py URL SUBJECT QUEUE ID

It decodes each task and prints the same four lines per task as `worker --work-time 0`
does, so that both do comparable work per message. It prints `Waiting for tasks` once the
server has the subscription, and on SIGINT or SIGTERM drains the connection and prints
`Processed N messages`.
"""

import asyncio
import json
import signal
import sys

import nats

# Room for a whole benchmark run, so that no message is dropped as a slow consumer.
PENDING_MESSAGES = 1_000_000
PENDING_BYTES = 1024 * 1024 * 1024


async def main() -> None:
    url, subject, queue, worker_id = sys.argv[1:5]
    # One write per line, as Rust's stdout does, so that `bench` reads each line as soon as it is printed.
    sys.stdout.reconfigure(line_buffering=True)
    client = await nats.connect(url, name=f"bench-nats-py-{worker_id}")
    processed = 0

    async def handle(message) -> None:
        nonlocal processed
        task = json.loads(message.data)
        print(f"[Worker {worker_id}] Processing message #{processed + 1}")
        print(f"  Task ID: {task['task_id']}")
        print(f"  Timestamp: {task['timestamp']}")
        processed += 1
        print(f"[Worker {worker_id}] Completed task {task['task_id']}")

    await client.subscribe(
        subject,
        queue=queue,
        cb=handle,
        pending_msgs_limit=PENDING_MESSAGES,
        pending_bytes_limit=PENDING_BYTES,
    )
    await client.flush()
    print(f"[Worker {worker_id}] Waiting for tasks...")

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()

    await client.drain()
    print(f"[Worker {worker_id}] Processed {processed} messages")


if __name__ == "__main__":
    asyncio.run(main())
