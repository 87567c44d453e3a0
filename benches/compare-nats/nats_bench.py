"""Publish load against a NATS JetStream stream, acknowledged by the stream (with
`sync_interval: always`, after the fsync on a quorum of R3). P processes, each either T tasks
with one publish in flight (`--window 0`), or one pipelined publisher keeping up to W
publishes unacknowledged (`publish_async`, as Go's PublishAsync; the cheapest way for a
Python client to load the server). Prints one JSON line: messages/s, MB/s, latency
percentiles."""

import argparse
import asyncio
import json
import multiprocessing as mp
import time

import nats


async def pipelined(servers, subject, payload, window, seconds, out):
    nc = await nats.connect(servers=servers)
    js = nc.jetstream(publish_async_max_pending=window)
    deadline = time.monotonic() + seconds
    latencies = []
    started = time.monotonic()
    while time.monotonic() < deadline:
        t = time.monotonic()
        future = await js.publish_async(subject, payload, wait_stall=10)
        future.add_done_callback(
            lambda f, t=t: f.exception() is None and latencies.append(time.monotonic() - t)
        )
    await js.publish_async_completed()
    elapsed = time.monotonic() - started
    await nc.close()
    out.put((len(latencies), elapsed, latencies))


async def publisher(servers, subject, payload, tasks, seconds, out):
    nc = await nats.connect(servers=servers)
    js = nc.jetstream()
    deadline = time.monotonic() + seconds
    latencies = []

    async def one():
        while time.monotonic() < deadline:
            t = time.monotonic()
            await js.publish(subject, payload, timeout=10)
            latencies.append(time.monotonic() - t)

    started = time.monotonic()
    await asyncio.gather(*(one() for _ in range(tasks)))
    elapsed = time.monotonic() - started
    await nc.close()
    out.put((len(latencies), elapsed, latencies))


def run_process(servers, subject, size, tasks, window, seconds, out):
    payload = b"x" * size
    if window > 0:
        asyncio.run(pipelined(servers, subject, payload, window, seconds, out))
    else:
        asyncio.run(publisher(servers, subject, payload, tasks, seconds, out))


async def create_stream(servers, stream, subject, replicas):
    nc = await nats.connect(servers=servers)
    js = nc.jetstream()
    try:
        await js.delete_stream(stream)
    except Exception:
        pass
    await js.add_stream(
        name=stream, subjects=[subject], num_replicas=replicas, storage="file"
    )
    await nc.close()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--servers", required=True, help="comma-separated nats:// URLs")
    p.add_argument("--replicas", type=int, default=3)
    p.add_argument("--bytes", type=int, default=1024)
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--tasks", type=int, default=64)
    p.add_argument("--window", type=int, default=0)
    p.add_argument("--seconds", type=float, default=10)
    a = p.parse_args()
    servers = a.servers.split(",")
    asyncio.run(create_stream(servers, "bench", "bench.data", a.replicas))
    out = mp.Queue()
    procs = [
        mp.Process(
            target=run_process,
            args=(servers, "bench.data", a.bytes, a.tasks, a.window, a.seconds, out),
        )
        for _ in range(a.processes)
    ]
    for proc in procs:
        proc.start()
    results = [out.get() for _ in procs]
    for proc in procs:
        proc.join()
    count = sum(r[0] for r in results)
    elapsed = max(r[1] for r in results)
    lat = sorted(x for r in results for x in r[2])

    def pct(q):
        return lat[min(len(lat) - 1, int(q * len(lat)))] * 1000 if lat else 0.0

    print(
        json.dumps(
            {
                "messages_per_s": count / elapsed,
                "mb_per_s": count * a.bytes / elapsed / 1e6,
                "p50_ms": pct(0.50),
                "p99_ms": pct(0.99),
                "p999_ms": pct(0.999),
                "in_flight": a.processes * (a.window or a.tasks),
            }
        )
    )


if __name__ == "__main__":
    main()
