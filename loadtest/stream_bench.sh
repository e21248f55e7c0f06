#!/usr/bin/env bash
# TCP stream throughput: iperf3 through nginx's stream module and through prefork-lb, in
# alternating rounds, in one run. Unlike ../shared/bench/anchors.sh stream, it waits for
# prefork-lb's "worker process(es) ready" log line instead of probing the port: a probe
# connection queued before the workers are up reaches iperf3 together with the real test
# and makes the iperf3 server answer "busy".
#   loadtest/stream_bench.sh [--rounds 3] [--seconds 5]
set -u
rounds=3 secs=5
while [ $# -gt 0 ]; do
  case $1 in --rounds) rounds=$2; shift 2 ;; --seconds) secs=$2; shift 2 ;; *) echo "unknown option $1" >&2; exit 2 ;; esac
done
here=$(cd "$(dirname "$0")" && pwd)
shared=${SHARED:-$here/../../shared}
lb="$here/../.venv/bin/prefork-lb"
for tool in nginx iperf3; do command -v "$tool" >/dev/null || { echo "missing: $tool" >&2; exit 2; }; done
[ -x "$lb" ] || { echo "missing $lb (run make test once)" >&2; exit 2; }
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill -TERM -- "-$p" 2>/dev/null; done; sleep 0.3; rm -rf "$work"; }
trap cleanup EXIT
mod=$(ls /usr/lib/nginx/modules/ngx_stream_module.so 2>/dev/null | head -1)
g=(); [ -n "$mod" ] && g=(-g "load_module $mod;")
setsid iperf3 -s -p 15201 >"$work/iperf.out" 2>&1 & pids+=($!)
sleep 0.5
measure() { iperf3 -c 127.0.0.1 -p 15200 -t "$secs" 2>&1 | awk '/receiver/ {print $7, $8}'; }
mkdir -p "$work/nginx" "$work/lb"
cp "$here/bench-stream.toml" "$work/lb/"
for r in $(seq "$rounds"); do
  setsid nginx -p "$work/nginx" "${g[@]}" -c "$shared/bench/stream-nginx.conf" >/dev/null 2>&1 & p=$!; pids+=($p)
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/15200) 2>/dev/null && break; sleep 0.1; done
  sleep 0.5
  printf 'nginx-stream %s\n' "$(measure)"
  kill -TERM -- "-$p"; sleep 0.5
  rm -f "$work/lb/bench-stream-error.log"
  setsid "$lb" -c "$work/lb/bench-stream.toml" >/dev/null 2>&1 & p=$!; pids+=($p)
  for _ in $(seq 100); do grep -q "ready" "$work/lb/bench-stream-error.log" 2>/dev/null && break; sleep 0.1; done
  printf 'prefork-lb   %s\n' "$(measure)"
  kill -TERM -- "-$p"; sleep 0.5
done
