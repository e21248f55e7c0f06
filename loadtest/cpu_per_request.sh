#!/usr/bin/env bash
# CPU time per request of the balancer's workers (user and system, from /proc) and their
# context switches per request, under the same wrk load as loadtest/bench. Less noisy than
# requests/s on a shared 2-core machine: use it to A/B a change to the hot path.
#
#   loadtest/cpu_per_request.sh [prefork|nginx] [seconds] [--close] [--log] [--workers N]
#
# prefork: .venv/bin/prefork-lb with loadtest/bench.toml (2 workers, least_conn via the zone,
# keep-alive pool); --log turns on the buffered combined access log; --workers N changes the
# worker count. nginx: ../shared/bench/lb-nginx.conf. Backends: ../shared/bench/backend-nginx.conf
# on 127.0.0.1:18081/18082. Holds /tmp/prefork-lb-bench.lock like loadtest/bench.
set -u
which=${1:-prefork}; secs=${2:-5}; shift $(( $# < 2 ? $# : 2 ))
close="" log="" workers=""
while [ $# -gt 0 ]; do
  case $1 in
    --close) close=1; shift ;;
    --log) log=1; shift ;;
    --workers) workers=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
shared=${ANCHORS_DIR:-$repo/../shared/bench}
for tool in nginx wrk flock; do
  command -v "$tool" >/dev/null || { echo "missing: $tool" >&2; exit 2; }
done
[ -f "$shared/backend-nginx.conf" ] || { echo "missing: $shared/backend-nginx.conf" >&2; exit 2; }
[ "$which" = nginx ] || [ -x "$repo/.venv/bin/prefork-lb" ] || { echo "run make test first (.venv)" >&2; exit 2; }

exec 9>/tmp/prefork-lb-bench.lock
flock 9
for port in 18080 18081 18082; do
  if (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null; then echo "port $port is in use" >&2; exit 2; fi
done
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM -- "-$p" 2>/dev/null; done
  sleep 0.5
  for p in "${pids[@]}"; do kill -KILL -- "-$p" 2>/dev/null; done
  rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/backend" "$work/nginx"
setsid nginx -p "$work/backend" -c "$shared/backend-nginx.conf" >/dev/null 2>&1 9>&- &
pids+=($!)
if [ "$which" = nginx ]; then
  setsid nginx -p "$work/nginx" -c "$shared/lb-nginx.conf" >/dev/null 2>&1 9>&- &
else
  conf=$work/bench.toml
  cp "$here/bench.toml" "$conf"
  if [ -n "$log" ]; then
    sed -i "s|^access_log = \"off\"|access_log = { path = \"$work/access.log\", format = \"combined\", buffer = \"64k\", flush = \"1s\" }|" "$conf"
  fi
  [ -n "$workers" ] && sed -i "s/^workers = 2/workers = $workers/" "$conf"
  setsid "$repo/.venv/bin/prefork-lb" -c "$conf" >/dev/null 2>&1 9>&- &
fi
lb=$!
pids+=($lb)
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/18080) 2>/dev/null && break; sleep 0.1; done
sleep 1
kids=$(pgrep -P "$lb" | tr '\n' ' ')

ticks() {  # user and system clock ticks summed over the workers (fields after "comm")
  local u=0 s=0 a b
  for k in $kids; do
    read -r a b < <(sed 's/.*) //' "/proc/$k/stat" | awk '{print $12, $13}')
    u=$((u + a)); s=$((s + b))
  done
  echo "$u $s"
}
switches() {
  local v=0 n=0 a b
  for k in $kids; do
    a=$(awk '/^voluntary_ctxt/ {print $2}' "/proc/$k/status")
    b=$(awk '/^nonvoluntary_ctxt/ {print $2}' "/proc/$k/status")
    v=$((v + a)); n=$((n + b))
  done
  echo "$v $n"
}
hdr=(); [ -n "$close" ] && hdr=(-H 'Connection: close')
read -r v0 n0 < <(switches); read -r u0 s0 < <(ticks)
out=$(wrk -t1 -c50 -d"${secs}s" --latency "${hdr[@]}" http://127.0.0.1:18080/ 2>&1)
read -r u1 s1 < <(ticks); read -r v1 n1 < <(switches)
reqs=$(awk '/requests in/ {print $1}' <<<"$out")
rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
p99=$(awk '$1=="99%" {print $2}' <<<"$out")
awk -v u=$((u1 - u0)) -v s=$((s1 - s0)) -v r="$reqs" -v t="$(getconf CLK_TCK)" -v rps="$rps" -v p="$p99" \
  -v n="$which" -v v=$((v1 - v0)) -v iv=$((n1 - n0)) 'BEGIN {
  printf "%-8s %8.0f req/s  p99 %-8s CPU per request: user %.1f us, system %.1f us, total %.1f us;",
    n, rps, p, u / t / r * 1e6, s / t / r * 1e6, (u + s) / t / r * 1e6
  printf " context switches per request: %.2f voluntary, %.2f involuntary\n", v / r, iv / r }'
grep -E "Socket errors|Non-2xx" <<<"$out" || true
