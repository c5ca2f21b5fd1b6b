#!/usr/bin/env bash
# RF=3 acks=all (or RF=1) produce on a fresh 3-node dev cluster on this machine, as measured in
# docs/performance.md ("Replication"): 1 KiB records, one partition, no fsync per batch.
#
#   SLUICE=target/release/sluice bash tests/scripts/perf-rf.sh [RF] [COUNT]
#
# Prints the bench's summary. The cluster's directory is removed afterwards.
set -u
S=${SLUICE:-target/release/sluice}
RF=${1:-3}
COUNT=${2:-300000}
D=$(mktemp -d /tmp/sluice-perf-rf.XXXXXX)
stop() {
  for p in "$D"/cl/node-*/broker.pid; do [ -f "$p" ] && kill "$(cat "$p")" 2>/dev/null; done
  sleep 3
  for p in "$D"/cl/node-*/broker.pid; do [ -f "$p" ] && kill -9 "$(cat "$p")" 2>/dev/null; done
  rm -rf "$D"
}
trap stop EXIT
"$S" dev cluster --nodes 3 --data-dir "$D/cl" --detach >"$D/dev.log" 2>&1 || { cat "$D/dev.log"; exit 1; }
export SLUICE_TLS_CA="$D/cl/ca.pem" SLUICE_BROKER="$(cat "$D/cl/bootstrap")"
"$S" topic create rf --partitions 1 --replication-factor "$RF" --durability interval:1000 >/dev/null
"$S" bench produce --topic rf --record-size 1024 --count "$COUNT" --partitions 1 \
  --replication-factor "$RF" --acks all 2>&1 | tail -2
