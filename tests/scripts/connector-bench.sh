#!/usr/bin/env bash
# Connector bench (run by hand, release build: `cargo build --release -p sluice-cli`): a 100 MB file
# through file-source -> topic -> file-sink, once with a kill -9 of the broker half way (checked
# exact with cmp), once without (lines/s end to end); then the CLI's own produce and consume of
# the same file, for comparison. SLUICE=path/to/sluice, BENCH_DIR=scratch dir.
set -u
S=${SLUICE:-target/release/sluice}
D=${BENCH_DIR:-/tmp/sluice-connector-bench}; rm -rf $D; mkdir -p $D/io
PORT=19094
D=$D python3 - <<'PY'
import random
random.seed(7)
with open(__import__('os').environ['D']+'/io/in.log','w') as f:
    n=0; size=0
    while size < 100*1024*1024:
        line = "event %08d %s\n" % (n, "x"*random.randint(40,140))
        f.write(line); size += len(line); n += 1
print("lines", n)
PY
LINES=$(wc -l < $D/io/in.log)
start_broker() { ($S broker --data-dir $D/data --listen 127.0.0.1:$PORT > $D/broker.log 2>&1 &); sleep 2; }
cli() { $S --broker 127.0.0.1:$PORT --tls-ca $D/data/tls/ca.pem "$@"; }
wait_out() { # file lines
  local t0=$(date +%s.%N)
  while [ "$(wc -l < $1 2>/dev/null || echo 0)" -lt "$2" ]; do sleep 0.2; done
  echo "$(date +%s.%N) - $t0" | bc
}
start_broker
cli topic create copy --partitions 1 >/dev/null
cli topic create native --partitions 1 >/dev/null
cli plugin deploy tail --builtin file-source >/dev/null
cli plugin deploy write --builtin file-sink >/dev/null
printf 'topic = "copy"\n[settings]\npath = "%s/io/in.log"\n[grants]\ndirs = ["%s/io:ro"]\n' $D $D > $D/src.toml
printf 'topics = ["copy"]\n[settings]\npath = "%s/io/out.log"\n[grants]\ndirs = ["%s/io:rw"]\n' $D $D > $D/sink.toml
t0=$(date +%s.%N)
cli connector create in --plugin tail --config $D/src.toml >/dev/null
cli connector create out --plugin write --config $D/sink.toml >/dev/null
# Half way: kill -9 and restart.
while [ "$(wc -l < $D/io/out.log 2>/dev/null || echo 0)" -lt $((LINES/2)) ]; do sleep 0.2; done
pkill -9 -f "listen 127.0.0.1:$PORT"; sleep 0.5; start_broker
while [ "$(wc -l < $D/io/out.log 2>/dev/null || echo 0)" -lt $LINES ]; do sleep 0.2; done
t1=$(date +%s.%N)
sleep 2
cmp $D/io/in.log $D/io/out.log && echo "COPY EXACT across kill -9: $LINES lines, $(stat -c %s $D/io/out.log) bytes, $(echo "$t1 - $t0" | bc) s end to end"
cli connector describe in | grep -E "records|restarts"
cli connector delete in >/dev/null; cli connector delete out >/dev/null
# Throughput without faults: a new pair on a fresh topic.
cli topic create copy2 --partitions 1 >/dev/null
sed -e 's/"copy"/"copy2"/' $D/src.toml > $D/src2.toml
sed -e 's/\["copy"\]/["copy2"]/' -e 's/out.log/out2.log/' $D/sink.toml > $D/sink2.toml
t0=$(date +%s.%N)
cli connector create in2 --plugin tail --config $D/src2.toml >/dev/null
cli connector create out2 --plugin write --config $D/sink2.toml >/dev/null
while [ "$(wc -l < $D/io/out2.log 2>/dev/null || echo 0)" -lt $LINES ]; do sleep 0.1; done
t1=$(date +%s.%N)
E=$(echo "$t1 - $t0" | bc)
echo "connectors end to end: $LINES lines in $E s = $(echo "$LINES / $E" | bc) lines/s"
cmp -s $D/io/in.log $D/io/out2.log && echo "copy 2 exact"
# Native: the CLI's producer with the same file, then its consumer to a file.
t0=$(date +%s.%N)
cli produce native < $D/io/in.log
t1=$(date +%s.%N)
E=$(echo "$t1 - $t0" | bc)
echo "native produce (sluice produce): $LINES lines in $E s = $(echo "$LINES / $E" | bc) lines/s"
t0=$(date +%s.%N)
cli consume native --from-beginning -n $LINES > $D/io/native-out.log
t1=$(date +%s.%N)
E=$(echo "$t1 - $t0" | bc)
echo "native consume to a file (sluice consume): $LINES lines in $E s = $(echo "$LINES / $E" | bc) lines/s"
cmp -s $D/io/in.log $D/io/native-out.log && echo "native copy exact"
pkill -f "listen 127.0.0.1:$PORT"
