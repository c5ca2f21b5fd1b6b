#!/usr/bin/env bash
# The cost of security (docs/security.md), run by hand against a release build:
#   SLUICE=target/release/sluice bash tests/scripts/perf-secure.sh open|secure [p100] [p1k]
# `open`: the default broker (no authentication). `secure`: client_auth = "credentials",
# authorization on, a default quota far above the rate, and the bench running as a SCRAM user
# allowed by an ACL — every request authenticated, authorised and charged. Alternate the modes.
set -u
S=${SLUICE:-target/release/sluice}; D=${BENCH_DIR:-/tmp/sluice-sec-bench}; PORT=${PORT:-19630}
mode=$1; shift
rm -rf $D; mkdir -p $D
if [ "$mode" = secure ]; then
  printf 'client_auth = "credentials"\nauthorization = true\nsuper_users = ["admin"]\n' > $D/broker.toml
  CONF="--config $D/broker.toml"
else CONF=""; fi
($S broker --data-dir $D/data --listen 127.0.0.1:$PORT $CONF > $D/broker.log 2>&1 &)
for _ in $(seq 50); do [ -f $D/data/broker.addr ] && break; sleep 0.2; done
export SLUICE_BROKER=127.0.0.1:$PORT SLUICE_TLS_CA=$D/data/tls/ca.pem
if [ "$mode" = secure ]; then
  $S auth issue-cert admin --data-dir $D/data --out-dir $D >/dev/null
  A="--tls-cert $D/admin.pem --tls-key $D/admin.key"
  $S $A topic create t --partitions 1 --durability interval:1000 >/dev/null
  echo pw-bench | $S $A user create bench >/dev/null
  $S $A acl add --principal bench --resource topic --name t --operation all >/dev/null
  $S $A quota set '*' --produce-bytes-per-sec 100000000000 --requests-per-sec 10000000 >/dev/null
  export SLUICE_USER=bench SLUICE_PASSWORD=pw-bench
else
  $S topic create t --partitions 1 --durability interval:1000 >/dev/null
fi
for w in "$@"; do
  case $w in
    p100) $S bench produce --record-size 100 --count 2000000 --partitions 1 --topic t 2>/dev/null | grep -E "^produce:" | sed "s/^/$mode p100 /";;
    p1k) $S bench produce --record-size 1024 --count 500000 --partitions 1 --topic t 2>/dev/null | grep -E "^produce:" | sed "s/^/$mode p1k /";;
  esac
done
pkill -f "listen 127.0.0.1:$PORT"; sleep 1
