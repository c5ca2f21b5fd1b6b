#!/usr/bin/env bash
# Connector bench (run by hand, release build: `cargo build --release -p sluice-cli`): a 100 MB file
# through file-source -> topic -> file-sink with a kill -9 of the broker half way (checked exact
# with cmp); then each connector on its own (lines/s): the file source into a topic against the
# CLI's own `sluice produce` of the file, the file sink from the topic against `sluice consume`
# to a file, and the HTTP sink POSTing the topic to a loopback server (python3, curl).
# SLUICE=path/to/sluice, BENCH_DIR=scratch dir.
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
# Each connector on its own, against the native CLI doing the same work.
log_end() { cli topic describe $1 | awk -F'\t' '$1=="0"{print $7}'; }
wait_log_end() { # topic count
  while [ "$(log_end $1)" != "$2" ]; do sleep 0.1; done
}
rate() { echo "$LINES / ($2 - $1)" | bc; }
# The file source alone: the file into a topic.
cli topic create from-file --partitions 1 >/dev/null
sed -e 's/"copy"/"from-file"/' $D/src.toml > $D/src2.toml
t0=$(date +%s.%N)
cli connector create in2 --plugin tail --config $D/src2.toml >/dev/null
wait_log_end from-file $LINES
t1=$(date +%s.%N)
SRC=$(rate $t0 $t1); echo "file source: $LINES lines into a topic: $SRC lines/s"
# Native: the CLI's producer with the same file.
t0=$(date +%s.%N)
cli produce native < $D/io/in.log
t1=$(date +%s.%N)
NPROD=$(rate $t0 $t1); echo "native produce (sluice produce): $NPROD lines/s"
# The file sink alone: the topic (filled) into a file.
sed -e 's/\["copy"\]/["from-file"]/' -e 's/out.log/out2.log/' $D/sink.toml > $D/sink2.toml
t0=$(date +%s.%N)
cli connector create out2 --plugin write --config $D/sink2.toml >/dev/null
while [ "$(wc -l < $D/io/out2.log 2>/dev/null || echo 0)" -lt $LINES ]; do sleep 0.1; done
t1=$(date +%s.%N)
SINK=$(rate $t0 $t1); echo "file sink: $LINES lines from a topic to a file: $SINK lines/s"
cmp -s $D/io/in.log $D/io/out2.log && echo "file sink copy exact"
# Native: the CLI's consumer to a file.
t0=$(date +%s.%N)
cli consume native --from-beginning -n $LINES > $D/io/native-out.log
t1=$(date +%s.%N)
NCONS=$(rate $t0 $t1); echo "native consume to a file (sluice consume): $NCONS lines/s"
cmp -s $D/io/in.log $D/io/native-out.log && echo "native copy exact"
# The HTTP sink: the topic POSTed as JSON lines to a loopback server that counts them.
HPORT=19095
python3 - $HPORT > $D/http.log 2>&1 <<'PY' &
import http.server, sys, threading
count = 0
lock = threading.Lock()
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        global count
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        with lock:
            count += body.count(b"\n")
        self.send_response(200); self.send_header("content-length", "0"); self.end_headers()
    def do_GET(self):
        b = str(count).encode()
        self.send_response(200); self.send_header("content-length", str(len(b))); self.end_headers()
        self.wfile.write(b)
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
PY
HTTP_PID=$!
sleep 1
cli plugin deploy post --builtin http-sink >/dev/null
printf 'topics = ["from-file"]\n[settings]\nurl = "http://127.0.0.1:%s/ingest"\n[grants]\nhttp_hosts = ["127.0.0.1:%s"]\n' $HPORT $HPORT > $D/http.toml
t0=$(date +%s.%N)
cli connector create post --plugin post --config $D/http.toml >/dev/null
while [ "$(curl -s http://127.0.0.1:$HPORT/)" -lt $LINES ] 2>/dev/null; do sleep 0.1; done
t1=$(date +%s.%N)
HTTP=$(rate $t0 $t1); echo "HTTP sink: $LINES lines POSTed as JSON lines: $HTTP lines/s ($(curl -s http://127.0.0.1:$HPORT/) received)"
cli connector describe post | grep -E "records|restarts|last error"
kill $HTTP_PID
echo "ratios: file source / sluice produce = $(echo "scale=2; $SRC / $NPROD" | bc); file sink / sluice consume = $(echo "scale=2; $SINK / $NCONS" | bc); HTTP sink / file sink = $(echo "scale=2; $HTTP / $SINK" | bc)"
pkill -f "listen 127.0.0.1:$PORT"
