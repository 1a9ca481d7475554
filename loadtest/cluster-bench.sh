#!/usr/bin/env bash
# The 3-node cluster benchmark (docs/benchmarks.md, "Cluster (3 nodes + Redis)").
#
# Starts a private redis-server (unix socket, no persistence) and three wsrelay nodes
# (release binary, workers = 1, broker = "redis") pinned to core 0, runs wsrelay-load
# pinned to core 1 against them, and measures in one go (medians over --runs, default 3):
#   - fan-out across nodes: 3,000 raw-room subscribers (1,000 per node), one publisher on
#     node 1 at 1,000 msg/s: deliveries/s, loss (must be 0), latency per node, same-node vs
#     cross-node (the Redis hop), Redis CPU per 100k deliveries/s, relay CPU per delivery;
#   - subscribe-on-demand under churn: 1,000 reconnects/s of Centrifugo subscribers on
#     distinct channels (each a subscribe and an unsubscribe), redis_subscribe_linger 5s
#     (default) and 0: Redis commands/s (INFO commandstats), Redis CPU, relay CPU;
#   - memory per history entry: the relay's publish-with-history script on a capped stream.
# Loopback only; every run is bounded (--duration, timeouts) and stops by itself; the whole
# script takes a few minutes with --runs 3 (hard limit: 10 minutes).
#
#   cargo build --release -p wsrelay -p wsrelay-load
#   loadtest/cluster-bench.sh [--runs N] [--secs S] [--out DIR] [--skip fanout,churn,memory]
#
# Output: DIR/result.json (every run and the medians), DIR/result.md (the tables, also
# printed), DIR/json/*.json (the generator's reports), DIR/log/*, DIR/node*.{toml,log}.
# Default DIR: target/bench/cluster-<date>. `--help` lists the other options.
# The machine has 2 cores: three nodes and Redis share one, so the figures are for
# comparison between builds and settings, not capacity claims.
set -euo pipefail
cd "$(dirname "$0")/.."
for bin in redis-server taskset python3; do
  command -v "$bin" >/dev/null || { echo "cluster-bench: $bin is not installed" >&2; exit 1; }
done
for f in target/release/wsrelay target/release/wsrelay-load; do
  [[ -x $f ]] || { echo "cluster-bench: $f missing: cargo build --release -p wsrelay -p wsrelay-load" >&2; exit 1; }
done
exec timeout --kill-after=10 600 python3 loadtest/cluster_bench.py "$@"
