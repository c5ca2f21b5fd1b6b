#!/usr/bin/env bash
# The performance workloads of docs/performance.md, run by hand against a release build:
#   SLUICE=target/release/sluice bash tests/scripts/perf-bench.sh [WORKLOAD...]
# Each workload starts a broker on a fresh data directory (BENCH_DIR, default
# /tmp/sluice-perf-bench), creates its topic, runs `sluice bench`, and stops the broker, so runs
# do not see each other's data. Compare two builds by alternating them (SLUICE=a, SLUICE=b, a, b...).
# BROKER_CONFIG=FILE starts the brokers with --config FILE.
# Workloads (default: all but the ones the named binary does not know):
#   p1k     1 KiB, 1 producer, 1 partition, no fsync per batch (durability interval:1000)
#   p1k-fs  1 KiB, 1 producer, 1 partition, fsync per group commit
#   p100    100 B, 1 producer, 1 partition, no fsync
#   p1k-4   1 KiB, 4 producers, 4 partitions, no fsync
#   c1k     consume 500,000 x 1 KiB (filled untimed first), no fsync
#   open    1 KiB, 1 producer, open loop at RATE records/s (default 100000), no fsync
#   open-fs the same with fsync per group commit
#   omb     the OpenMessaging Benchmark's shape: 1 KiB, 100 partitions, 4 producers and
#           4 consumers at once (e2e: latency is send -> received), no fsync
#   closed  1 KiB, 1 producer, closed loop of 1 batch of 1,000 records, no fsync
set -u
S=${SLUICE:-target/release/sluice}
D=${BENCH_DIR:-/tmp/sluice-perf-bench}
PORT=${PORT:-19620}
RATE=${RATE:-100000}
cli() { $S --broker 127.0.0.1:$PORT --tls-ca $D/data/tls/ca.pem "$@"; }
run() { # name topic-create-args -- bench-args
  local name=$1; shift
  local create=()
  while [ "$1" != "--" ]; do create+=("$1"); shift; done; shift
  rm -rf $D; mkdir -p $D
  ($S broker --data-dir $D/data --listen 127.0.0.1:$PORT ${BROKER_CONFIG:+--config $BROKER_CONFIG} > $D/broker.log 2>&1 &)
  for _ in $(seq 50); do [ -f $D/data/tls/ca.pem ] && cli topic list >/dev/null 2>&1 && break; sleep 0.2; done
  cli topic create t "${create[@]}" >/dev/null
  echo "== $name: $*"
  local bp b0 b1
  bp=$(pgrep -f "listen 127.0.0.1:$PORT" | head -1)
  b0=$(awk '{print $14+$15}' /proc/$bp/stat)
  /usr/bin/time -o $D/client.time -f "%U %S" $S --broker 127.0.0.1:$PORT --tls-ca $D/data/tls/ca.pem \
    bench "$@" ${EXTRA:-} --topic t 2>/dev/null | grep -E "^[a-z-]+: .*records/s|latency"
  b1=$(awk '{print $14+$15}' /proc/$bp/stat)
  # CPU seconds (user + system) of the bench client and of the broker, for the whole run.
  echo "cpu: client $(awk '{print $1+$2}' $D/client.time) s, broker $(echo "scale=2; ($b1-$b0)/100" | bc) s"
  pkill -f "listen 127.0.0.1:$PORT"; sleep 1
}
NOFSYNC=(--durability interval:1000)
# EXTRA="--in-flight 5" adds bench flags to every workload.
for w in ${@:-p1k p1k-fs p100 p1k-4 c1k open closed}; do
  case $w in
    p1k) run p1k --partitions 1 "${NOFSYNC[@]}" -- produce --record-size 1024 --count 500000 --partitions 1 ;;
    p1k-fs) run p1k-fs --partitions 1 -- produce --record-size 1024 --count 300000 --partitions 1 ;;
    p100) run p100 --partitions 1 "${NOFSYNC[@]}" -- produce --record-size 100 --count 2000000 --partitions 1 ;;
    p1k-4) run p1k-4 --partitions 4 "${NOFSYNC[@]}" -- produce --record-size 1024 --count 800000 --producers 4 --partitions 4 ;;
    c1k) run c1k --partitions 1 "${NOFSYNC[@]}" -- consume --record-size 1024 --count 500000 --partitions 1 ;;
    open) run open --partitions 1 "${NOFSYNC[@]}" -- produce --record-size 1024 --count $((RATE * 5)) --partitions 1 --rate $RATE ;;
    open-fs) run open-fs --partitions 1 -- produce --record-size 1024 --count $((RATE * 5)) --partitions 1 --rate $RATE ;;
    open5) run open5 --partitions 1 "${NOFSYNC[@]}" -- produce --record-size 1024 --count $((RATE * 5)) --partitions 1 --rate $RATE --in-flight 5 ;;
    omb) run omb --partitions 100 "${NOFSYNC[@]}" -- e2e --record-size 1024 --count 800000 --partitions 100 --producers 4 --consumers 4 ;;
    closed) run closed --partitions 1 "${NOFSYNC[@]}" -- produce --record-size 1024 --count 500000 --partitions 1 --in-flight 1 --batch-records 1000 ;;
    *) echo "unknown workload $w"; exit 2 ;;
  esac
done
