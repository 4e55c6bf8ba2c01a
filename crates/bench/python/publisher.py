"""Publish tasks with nats-py as fast as the client takes them, for `bench`.

Usage: publisher.py URL SUBJECT COUNT DATA_SIZE

Each message is a task built the way `load_generator` builds one: a fresh id and
timestamp per task, `DATA_SIZE` bytes of filler in `data`, encoded as JSON. The clock
runs from the first publish to the end of the flush after the last one, and the result
is printed as one JSON object with `publish_seconds` and `rate_per_second`.
"""

import asyncio
import json
import sys
import time
from datetime import datetime, timezone

import nats


async def main() -> None:
    url, subject, count, data_size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    client = await nats.connect(url, name="bench-nats-py-publisher")
    filler = "x" * data_size
    width = max(3, len(str(count)))

    started = time.perf_counter()
    for number in range(1, count + 1):
        timestamp = datetime.now(timezone.utc).isoformat(timespec="microseconds")
        task = {
            "task_id": f"PUB-{number:0{width}d}",
            "timestamp": timestamp.replace("+00:00", "Z"),
            "data": filler,
        }
        await client.publish(subject, json.dumps(task).encode())
    # publish() only buffers; the flush returns once the server has replied to a PING sent
    # after the last message, so it has all of them.
    await client.flush(timeout=60)
    elapsed = time.perf_counter() - started

    print(json.dumps({"count": count, "publish_seconds": elapsed, "rate_per_second": count / elapsed}))
    await client.close()


if __name__ == "__main__":
    asyncio.run(main())
