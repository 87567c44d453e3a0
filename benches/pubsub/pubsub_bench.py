"""Publish and StreamingPull throughput of one Pub/Sub endpoint, driven with Google's own
client library's gRPC layer (google-cloud-pubsub): `threads` publishers each sending
Publish requests of `batch` messages of `size` bytes, then one StreamingPull per thread
acking on the stream. Prints one JSON line."""

import argparse
import json
import queue
import random
import threading
import time

from google.cloud import pubsub_v1
from google.pubsub_v1 import types
from google.pubsub_v1.services.publisher.transports import PublisherGrpcTransport
from google.pubsub_v1.services.subscriber.transports import SubscriberGrpcTransport
import grpc


def clients(target):
    opts = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]
    pub = pubsub_v1.PublisherClient(
        transport=PublisherGrpcTransport(channel=grpc.insecure_channel(target, options=opts))
    )
    sub = pubsub_v1.SubscriberClient(
        transport=SubscriberGrpcTransport(channel=grpc.insecure_channel(target, options=opts))
    )
    return pub, sub


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--threads", type=int, default=4)
    a = ap.parse_args()
    pub, sub = clients(a.target)
    tag = f"b{random.randrange(1 << 30)}"
    topic = f"projects/bench/topics/{tag}"
    subscription = f"projects/bench/subscriptions/{tag}"
    pub.create_topic(request={"name": topic, "labels": {"weir-partitions": str(a.threads)}})
    sub.create_subscription(request={"name": subscription, "topic": topic, "ack_deadline_seconds": 60})
    data = b"x" * a.size
    per_thread = a.messages // a.threads // a.batch
    total = per_thread * a.batch * a.threads

    def publisher():
        msgs = [types.PubsubMessage(data=data) for _ in range(a.batch)]
        for _ in range(per_thread):
            pub.api.publish(request=types.PublishRequest(topic=topic, messages=msgs), timeout=60)

    t0 = time.time()
    ts = [threading.Thread(target=publisher) for _ in range(a.threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    publish_s = time.time() - t0

    received = [0]
    lock = threading.Lock()
    done = threading.Event()

    def puller():
        acks = queue.Queue()

        def requests():
            yield types.StreamingPullRequest(
                subscription=subscription,
                stream_ack_deadline_seconds=60,
                max_outstanding_messages=5000,
            )
            while not done.is_set():
                try:
                    ids = acks.get(timeout=0.2)
                except queue.Empty:
                    continue
                yield types.StreamingPullRequest(ack_ids=ids)

        try:
            for r in sub.api.streaming_pull(requests=requests(), timeout=300):
                ids = [m.ack_id for m in r.received_messages]
                acks.put(ids)
                with lock:
                    received[0] += len(ids)
                    if received[0] >= total:
                        done.set()
                if done.is_set():
                    break
        except Exception as e:  # noqa: BLE001 - a stream ended by cancellation
            if not done.is_set():
                print("stream error:", e)

    t0 = time.time()
    ps = [threading.Thread(target=puller, daemon=True) for _ in range(a.threads)]
    for p in ps:
        p.start()
    done.wait(timeout=300)
    pull_s = time.time() - t0
    print(json.dumps({
        "name": a.name,
        "messages": total,
        "size": a.size,
        "publish_msg_s": round(total / publish_s),
        "publish_mb_s": round(total * a.size / publish_s / 1e6, 1),
        "pull_msg_s": round(received[0] / pull_s),
        "pull_mb_s": round(received[0] * a.size / pull_s / 1e6, 1),
    }), flush=True)


if __name__ == "__main__":
    main()
