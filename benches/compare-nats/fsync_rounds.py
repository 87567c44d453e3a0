"""The Weir nodes' fsync rounds, from each node's /metrics (`weir_broker_fsync_round_seconds`).

    fsync_rounds.py snapshot CLUSTER_DIR OUT.json   # cumulative bucket counts per node
    fsync_rounds.py since CLUSTER_DIR BEFORE.json   # rounds since the snapshot, by length

A latency spike on every node at once is usually the disk: this says how many of a run's
fsync rounds took 10 ms or more on each node, which the nodes' logs (50 ms and more) miss.
"""

import json
import sys
import urllib.request

HTTP_PORT = 9080  # weir-cluster: every node serves /metrics here on its own address
METRIC = "weir_broker_fsync_round_seconds_bucket"
SHOWN = ["0.01", "0.025", "0.05", "0.1"]


def scrape(cluster_dir):
    with open(f"{cluster_dir}/cluster.json") as f:
        nodes = json.load(f)["nodes"]
    counts = {}
    for node in nodes:
        host = node["addr"].rsplit(":", 1)[0]
        try:
            body = urllib.request.urlopen(f"http://{host}:{HTTP_PORT}/metrics", timeout=5).read()
        except OSError as e:
            print(f"{node['name']}: /metrics unreachable: {e}", file=sys.stderr)
            continue
        buckets = {}
        for line in body.decode().splitlines():
            if line.startswith(METRIC + "{"):
                le = line.split('le="', 1)[1].split('"', 1)[0]
                buckets[le] = float(line.rsplit(" ", 1)[1])
        counts[node["name"]] = buckets
    return counts


def main():
    mode, cluster_dir, path = sys.argv[1:4]
    now = scrape(cluster_dir)
    if mode == "snapshot":
        with open(path, "w") as f:
            json.dump(now, f)
        return
    with open(path) as f:
        before = json.load(f)
    for name, buckets in sorted(now.items()):
        old = before.get(name, {})
        delta = {le: buckets.get(le, 0) - old.get(le, 0) for le in buckets}
        total = delta.get("+Inf", 0)
        # a bucket counts rounds of at most `le` seconds: rounds longer than `le` are the rest
        longer = [f"> {float(le) * 1000:g} ms: {int(total - delta.get(le, total))}" for le in SHOWN]
        print(f"  {name}: {int(total)} rounds; " + ", ".join(longer))


if __name__ == "__main__":
    main()
