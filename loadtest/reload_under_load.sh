#!/usr/bin/env bash
# Zero-downtime proof harness: reloads, a SIGKILLed worker, a graceful quit and a broken
# reload, all under load, against prefork-lb and against nginx with the same driver.
#
#   loadtest/reload_under_load.sh [--seconds 20] [--reloads 5] [--interval 2]
#                                 [--lb prefork|nginx|broken|all]
#                                 [--scenario reload|kill|quit|badconfig|all]
#                                 [--client wrk|python] [--keep]
#
# Scenarios (each run twice, keep-alive and `-H 'Connection: close'`, except quit):
#   reload     wrk -t2 -c50 for --seconds; --reloads reloads --interval s apart, the upstream
#              list alternating [18081,18082] -> [18082] -> both -> [18081] -> ...
#   kill       wrk for ~10 s; SIGKILL one worker at ~3 s; respawn latency via `pgrep -P`.
#   quit       a 200 MB download (curl --limit-rate 40M) through the balancer; QUIT at 1 s;
#              curl exit code, sha256 against the source, time until the master exits.
#   badconfig  append an unknown key/directive, run -t, reload while wrk runs.
#   --lb broken: prefork-lb with PREFORK_LB_TEST_BROKEN_REUSEPORT=1 (each worker binds and
#              closes its own SO_REUSEPORT socket); only the reload scenario; it MUST show
#              socket errors ("harness sensitivity: OK"), proving the harness can fail.
#
# Ports (127.0.0.1 only): balancer 18080; backends 18081/18082 (../shared/bench/backend-nginx.conf);
# 18083 a third nginx serving the 200 MB file (quit scenario; its config is below).
# Everything lives in a mktemp -d scratch dir (--keep keeps it) and is stopped on exit.
# --client python drives the load with loadtest/reload_client.py instead of wrk.
# Needs: nginx, wrk (or --client python), curl, sha256sum, pgrep, setsid; installs nothing.
# Exit code: 0 when every row has its expected verdict, 1 otherwise, 2 on a usage/setup error.
set -u
secs=20 reloads=5 interval=2 lb_sel=all scen_sel=all client=wrk keep=""
usage() { sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
while [ $# -gt 0 ]; do
  case $1 in
    --seconds) secs=${2:?}; shift 2 ;;
    --reloads) reloads=${2:?}; shift 2 ;;
    --interval) interval=${2:?}; shift 2 ;;
    --lb) lb_sel=${2:?}; shift 2 ;;
    --scenario) scen_sel=${2:?}; shift 2 ;;
    --client) client=${2:?}; shift 2 ;;
    --keep) keep=1; shift ;;
    -h|--help) usage ;;
    *) echo "unknown option $1" >&2; usage ;;
  esac
done
case $lb_sel in prefork|nginx|broken|all) ;; *) echo "--lb must be prefork, nginx, broken or all" >&2; exit 2 ;; esac
case $scen_sel in reload|kill|quit|badconfig|all) ;; *) echo "--scenario must be reload, kill, quit, badconfig or all" >&2; exit 2 ;; esac
case $client in wrk|python) ;; *) echo "--client must be wrk or python" >&2; exit 2 ;; esac
for n in "$secs" "$reloads" "$interval"; do
  [[ $n =~ ^[0-9]+$ ]] && [ "$n" -gt 0 ] || { echo "--seconds, --reloads and --interval take positive integers" >&2; exit 2; }
done

here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
shared=${SHARED_BENCH:-$repo/../shared/bench}
backend_conf=$shared/backend-nginx.conf
plb=$repo/.venv/bin/prefork-lb
python=$repo/.venv/bin/python
[ -x "$python" ] || python=python3
concurrency=50
workers=2
lb_port=18080

# ---- what is needed ----------------------------------------------------------------------
missing=()
for tool in nginx curl sha256sum pgrep setsid; do command -v "$tool" >/dev/null || missing+=("$tool"); done
[ "$client" = wrk ] && { command -v wrk >/dev/null || missing+=("wrk (or use --client python)"); }
[ "$client" = python ] && { command -v "$python" >/dev/null || missing+=("python3"); }
[ -f "$backend_conf" ] || missing+=("$backend_conf")
if [ "$lb_sel" != nginx ] && [ ! -x "$plb" ]; then missing+=("$plb (run 'make test' to build .venv)"); fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "missing: ${missing[*]} (Debian: apt-get install nginx-light wrk curl procps)" >&2; exit 2
fi
busy=()
for p in 18080 18081 18082 18083; do (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && busy+=("$p"); done
if [ ${#busy[@]} -gt 0 ]; then
  echo "ports in use on 127.0.0.1: ${busy[*]} (another benchmark running?); not touching them" >&2; exit 2
fi

# ---- process plumbing (as ../shared/bench/anchors.sh) --------------------------------------
work=$(mktemp -d)
pids=()   # process groups we started (setsid): balancers and backends
bg=()     # plain background jobs we started: load generators, curl
cleanup() {
  for p in "${bg[@]}"; do kill -TERM "$p" 2>/dev/null; done
  for p in "${pids[@]}"; do kill -TERM -- "-$p" 2>/dev/null; done
  sleep 0.5
  for p in "${pids[@]}"; do kill -KILL -- "-$p" 2>/dev/null; done
  wait 2>/dev/null
  if [ -n "$keep" ]; then echo "scratch dir kept: $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

start() {  # start NAME COMMAND... in its own process group; its pid (= group) in $started
  setsid "${@:2}" >"$work/$1.out" 2>&1 &
  started=$!
  pids+=("$started")
}
stop() {  # stop PID: TERM its group, wait until the whole group is gone (KILL after 10 s)
  kill -TERM -- "-$1" 2>/dev/null
  for _ in $(seq 100); do kill -0 -- "-$1" 2>/dev/null || break; sleep 0.1; done
  kill -KILL -- "-$1" 2>/dev/null
  wait "$1" 2>/dev/null
}
wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; return 1; }
wait_closed() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null || return 0; sleep 0.1; done; return 1; }
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
alive() {  # alive PID: exists and is not a zombie
  local st
  st=$(cut -d' ' -f3 "/proc/$1/stat" 2>/dev/null) || return 1
  [ -n "$st" ] && [ "$st" != Z ]
}
live_children() {  # live_children PID: its children that are not zombies
  local c
  for c in $(pgrep -P "$1"); do alive "$c" && echo "$c"; done
  return 0
}
count_children() { live_children "$1" | wc -l; }

# ---- backends -------------------------------------------------------------------------------
backends_pid=""
big_pid=""
big_sha=""
start_backends() {
  [ -n "$backends_pid" ] && return 0
  mkdir -p "$work/backend"
  start backend nginx -p "$work/backend" -c "$backend_conf"
  backends_pid=$started
  wait_port 18081 && wait_port 18082
}
start_big_backend() {  # nginx on 18083 serving a 200 MB file (the quit scenario)
  [ -n "$big_pid" ] && return 0
  local d=$work/big
  mkdir -p "$d/www"
  echo "creating the 200 MB file ..."
  head -c 209715200 /dev/urandom >"$d/www/big.bin"
  big_sha=$(sha256sum "$d/www/big.bin" | cut -d' ' -f1)
  # nginx's worker runs as an unprivileged user when started as root: let it reach the file
  chmod 711 "$work" "$d"; chmod 755 "$d/www"; chmod 644 "$d/www/big.bin"
  cat >"$d/nginx.conf" <<EOF
# 200 MB source for the quit scenario; one worker, sendfile, nothing else.
worker_processes 1;
daemon off;
pid $d/big.pid;
error_log $d/big-error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    sendfile on;
    default_type application/octet-stream;
    client_body_temp_path tmp-body;
    server { listen 127.0.0.1:18083; root $d/www; location / { } }
}
EOF
  start big nginx -p "$d" -c "$d/nginx.conf"
  big_pid=$started
  wait_port 18083
}

# ---- balancer configs -----------------------------------------------------------------------
# Upstream variants: both = [18081, 18082], a = [18081], b = [18082], big = [18083].
servers_toml() {
  case $1 in
    both) echo '[{ address = "127.0.0.1:18081" }, { address = "127.0.0.1:18082" }]' ;;
    a) echo '[{ address = "127.0.0.1:18081" }]' ;;
    b) echo '[{ address = "127.0.0.1:18082" }]' ;;
    big) echo '[{ address = "127.0.0.1:18083" }]' ;;
  esac
}
servers_nginx() {
  case $1 in
    both) printf '        server 127.0.0.1:18081;\n        server 127.0.0.1:18082;\n' ;;
    a) printf '        server 127.0.0.1:18081;\n' ;;
    b) printf '        server 127.0.0.1:18082;\n' ;;
    big) printf '        server 127.0.0.1:18083;\n' ;;
  esac
}
write_prefork_conf() {  # write_prefork_conf DIR VARIANT -> DIR/lb.toml (loadtest/bench.toml's shape)
  cat >"$1/lb.toml" <<EOF
# generated by loadtest/reload_under_load.sh (upstream variant: $2)
workers = $workers
pid = "prefork-lb.pid"
error_log = "error.log"
error_log_level = "info"
worker_connections = 8192

[http]
access_log = "off"

[http.upstreams.backend]
method = "least_conn"
keepalive = 64
keepalive_requests = 1000000
servers = $(servers_toml "$2")

[[http.servers]]
listen = ["127.0.0.1:$lb_port"]
keepalive_requests = 1000000
  [[http.servers.locations]]
  match = "/"
  proxy_pass = "http://backend"
EOF
}
write_nginx_conf() {  # write_nginx_conf DIR VARIANT -> DIR/nginx-VARIANT.conf (../shared/bench/lb-nginx.conf's shape)
  cat >"$1/nginx-$2.conf" <<EOF
# generated by loadtest/reload_under_load.sh from lb-nginx.conf (upstream variant: $2)
worker_processes $workers;
daemon off;
pid $1/nginx.pid;
error_log $1/lb-error.log notice;
events { worker_connections 8192; }
http {
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path tmp-body;
    proxy_temp_path tmp-proxy;
    upstream backend {
        zone backend 64k;
        least_conn;
$(servers_nginx "$2")
        keepalive 64;
    }
    server {
        listen 127.0.0.1:$lb_port reuseport;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
}
set_variant() {  # set_variant LB DIR VARIANT: make VARIANT the balancer's config file
  if [ "$1" = nginx ]; then
    [ -f "$2/nginx-$3.conf" ] || write_nginx_conf "$2" "$3"
    cp "$2/nginx-$3.conf" "$2/nginx.conf"
  else
    write_prefork_conf "$2" "$3"
  fi
}
conf_of() { if [ "$1" = nginx ]; then echo "$2/nginx.conf"; else echo "$2/lb.toml"; fi; }
errlog_of() { if [ "$1" = nginx ]; then echo "$2/lb-error.log"; else echo "$2/error.log"; fi; }
pidfile_of() { if [ "$1" = nginx ]; then echo "$2/nginx.pid"; else echo "$2/prefork-lb.pid"; fi; }
name_of() { case $1 in prefork) echo prefork-lb ;; broken) echo prefork-lb/broken ;; *) echo "$1" ;; esac; }

lb_start() {  # lb_start LB DIR: start it, wait for the port, the pid file and all workers; sets $master
  local lb=$1 dir=$2 name
  name=$(basename "$dir")
  wait_closed "$lb_port" || { echo "port $lb_port still busy" >&2; return 1; }
  case $lb in
    prefork) start "$name" "$plb" -c "$dir/lb.toml" ;;
    broken) start "$name" env PREFORK_LB_TEST_BROKEN_REUSEPORT=1 "$plb" -c "$dir/lb.toml" ;;
    nginx) start "$name" nginx -p "$dir" -c "$dir/nginx.conf" ;;
  esac
  master=$started
  wait_port "$lb_port" || return 1
  for _ in $(seq 100); do
    [ -s "$(pidfile_of "$lb" "$dir")" ] && [ "$(count_children "$master")" -ge "$workers" ] && break
    sleep 0.1
  done
  [ "$(cat "$(pidfile_of "$lb" "$dir")" 2>/dev/null)" = "$master" ] || echo "warning: pid file does not name $master" >&2
}
lb_signal() {  # lb_signal LB DIR reload|quit -> the signaller's exit code; its output in DIR/signal.out
  if [ "$1" = nginx ]; then
    nginx -s "$3" -p "$2" -c "$2/nginx.conf" >>"$2/signal.out" 2>&1
  else
    "$plb" -s "$3" -c "$2/lb.toml" >>"$2/signal.out" 2>&1
  fi
}
lb_test() {  # lb_test LB DIR -> exit code of -t; its output in DIR/test.out
  if [ "$1" = nginx ]; then
    nginx -t -p "$2" -c "$2/nginx.conf" >"$2/test.out" 2>&1
  else
    "$plb" -t -c "$2/lb.toml" >"$2/test.out" 2>&1
  fi
}
variant_for() {  # the upstream variant after reload number $1: b, both, a, both, b, ...
  case $(( $1 % 4 )) in 1) echo b ;; 3) echo a ;; *) echo both ;; esac
}
log_problems() {  # log_problems FILE: error-level (and worse) lines, at most 6, deduplicated by text
  grep -E '\[(error|crit|alert|emerg)\]' "$1" 2>/dev/null | sed -E 's/^[0-9/]+ [0-9:]+ //; s/[0-9]+#[0-9]+: (\*[0-9]+ )?//' \
    | sort | uniq -c | sort -rn | head -6 | sed 's/^/      log: /'
}

# ---- load -----------------------------------------------------------------------------------
load_start() {  # load_start MODE SECONDS OUT: the load generator in the background; pid in $load_pid
  local hdr=()
  if [ "$client" = wrk ]; then
    [ "$1" = close ] && hdr=(-H 'Connection: close')
    wrk -t2 -c"$concurrency" -d"$2s" --latency "${hdr[@]}" "http://127.0.0.1:$lb_port/" >"$3" 2>&1 &
  else
    [ "$1" = close ] && hdr=(--close)
    "$python" "$here/reload_client.py" --port "$lb_port" --seconds "$2" --concurrency "$concurrency" \
      "${hdr[@]}" >"$3" 2>&1 &
  fi
  load_pid=$!
  bg+=("$load_pid")
}
load_parse() {  # load_parse OUT SECONDS: sets L_req L_rps L_err L_non2xx L_detail L_p99
  local out=$1
  if [ "$client" = wrk ]; then
    L_req=$(awk '/requests in/ {print $1}' "$out")
    L_rps=$(awk '/Requests\/sec/ {printf "%.0f", $2}' "$out")
    L_p99=$(awk '$1=="99%" {print $2}' "$out")
    local se c r w t
    se=$(awk '/Socket errors/ {for (i = 1; i < NF; i++) if ($i ~ /^(connect|read|write|timeout)$/) printf "%s ", $(i + 1)+0}' "$out")
    read -r c r w t <<<"${se:-0 0 0 0}"
    L_err=$(( c + r + w + t ))
    L_detail="connect/read/write/timeout=$c/$r/$w/$t"
    L_non2xx=$(awk -F': *' '/Non-2xx/ {print $2}' "$out"); L_non2xx=${L_non2xx:-0}
    [ -n "$L_req" ] || { L_req=0; L_rps=0; L_err=-1; L_detail="wrk failed: $(head -c 200 "$out")"; }
  else
    local line
    line=$("$python" - "$out" "$2" <<'EOF'
import json, sys
try:
    d = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
except Exception:
    print("0 0 -1 0 client-failed"); raise SystemExit
e = d["errors"]
print(d["requests"], round(d["requests"] / float(sys.argv[2])), sum(e.values()), d["non2xx"],
      "refused/reset/eof/timeout/other=%d/%d/%d/%d/%d retried_idempotent=%d" % (
          e["ECONNREFUSED"], e["ECONNRESET"], e["EOF"], e["timeout"], e["other"], d["retried_idempotent"]))
EOF
)
    read -r L_req L_rps L_err L_non2xx L_detail <<<"$line"
    L_p99=n/a
  fi
}

# ---- results --------------------------------------------------------------------------------
rows=()
failed=0
record() {  # record LB SCENARIO MODE VERDICT DETAIL...
  local row
  row=$(printf '%-17s %-9s %-9s %-5s %s' "$1" "$2" "$3" "$4" "${*:5}")
  rows+=("$row")
  echo "$row"
  # the exit code follows prefork-lb's rows only: nginx is the reference, broken mode is judged
  # by the sensitivity line
  [ "$1" = prefork-lb ] && [ "$4" != PASS ] && failed=1
  return 0
}
load_summary() { echo "requests=$L_req req/s=$L_rps socket-errors=$L_err ($L_detail) non2xx=$L_non2xx p99=$L_p99"; }
new_dir() { local d="$work/$1"; mkdir -p "$d"; echo "$d"; }

# ---- scenarios ------------------------------------------------------------------------------
run_reload() {  # run_reload LB MODE
  local lb=$1 mode=$2 dir i v rc bad_signals=0 ok_reloads old final expect got
  dir=$(new_dir "$lb-reload-$mode")
  set_variant "$lb" "$dir" both
  lb_start "$lb" "$dir" || { record "$(name_of "$lb")" reload "$mode" FAIL "balancer did not start"; stop "$master"; return; }
  if [ $(( reloads * interval + 2 )) -gt "$secs" ]; then
    echo "note: $reloads reloads x ${interval}s + 2 s outlast the ${secs}s load; the late ones run without load" >&2
  fi
  load_start "$mode" "$secs" "$dir/load.out"
  for i in $(seq "$reloads"); do
    sleep "$interval"
    v=$(variant_for "$i")
    set_variant "$lb" "$dir" "$v"
    lb_signal "$lb" "$dir" reload; rc=$?
    [ "$rc" -eq 0 ] || bad_signals=$((bad_signals + 1))
  done
  sleep 2
  old=$(( $(count_children "$master") - workers )); [ "$old" -lt 0 ] && old=0
  # the last variant must be what new connections see (backend 18081 answers "a", 18082 "b")
  case $v in a) expect="a" ;; b) expect="b" ;; *) expect="a+b" ;; esac
  got=$(for _ in 1 2 3 4 5 6; do curl -s --max-time 2 -H 'Connection: close' "http://127.0.0.1:$lb_port/"; done | sort -u | paste -sd+)
  case "$expect:$got" in
    a:a|b:b|a+b:a|a+b:b|a+b:a+b) final=yes ;;  # with both peers, 6 requests may all land on one
    *) final="NO (want $expect, got ${got:-nothing})" ;;
  esac
  wait "$load_pid"
  load_parse "$dir/load.out" "$secs"
  if [ "$lb" = nginx ]; then
    ok_reloads=$(grep -c 'received.*reconfiguring' "$(errlog_of "$lb" "$dir")")
  else
    ok_reloads=$(grep -c 'reconfigured: generation' "$(errlog_of "$lb" "$dir")")
  fi
  local verdict=PASS
  if [ "$lb" = broken ]; then
    [ "$L_err" -gt 0 ] && verdict=LOSES || verdict=NOLOSS
    broken_errors=$(( ${broken_errors:-0} + (L_err > 0 ? L_err : 0) ))
  else
    { [ "$L_err" -eq 0 ] && [ "$L_non2xx" -eq 0 ] && [ "$ok_reloads" -eq "$reloads" ] && [ "$final" = yes ]; } || verdict=FAIL
  fi
  record "$(name_of "$lb")" reload "$mode" "$verdict" "$(load_summary) reloads=$ok_reloads/$reloads" \
    "signal-failures=$bad_signals old-workers@+2s=$old new-config-served=$final"
  if [ "$verdict" = FAIL ] || [ "$lb" = broken ]; then log_problems "$(errlog_of "$lb" "$dir")"; fi
  stop "$master"
}

run_kill() {  # run_kill LB MODE
  local lb=$1 mode=$2 dir ks victim t0 t1 lat="none within 5 s" n verdict=PASS
  ks=$(( secs < 10 ? secs : 10 ))
  dir=$(new_dir "$lb-kill-$mode")
  set_variant "$lb" "$dir" both
  lb_start "$lb" "$dir" || { record "$(name_of "$lb")" kill "$mode" FAIL "balancer did not start"; stop "$master"; return; }
  load_start "$mode" "$ks" "$dir/load.out"
  sleep 3
  victim=$(live_children "$master" | head -1)
  kill -KILL "$victim"
  t0=$(now_ms)
  while [ $(( $(now_ms) - t0 )) -lt 5000 ]; do
    n=$(live_children "$master" | grep -vcx "$victim")
    if [ "$n" -ge "$workers" ]; then t1=$(now_ms); lat="$(( t1 - t0 )) ms"; break; fi
    sleep 0.005
  done
  wait "$load_pid"
  load_parse "$dir/load.out" "$ks"
  # only requests in flight on the killed worker may fail: at most its share of the 50 connections
  { [ "$L_err" -ge 0 ] && [ "$L_err" -le "$concurrency" ] && [ "$L_non2xx" -eq 0 ]; } || verdict=FAIL
  case $lat in *" ms") [ "${lat% ms}" -le 1000 ] || verdict=FAIL ;; *) verdict=FAIL ;; esac
  record "$(name_of "$lb")" kill "$mode" "$verdict" "$(load_summary) respawn=$lat (SIGKILL at 3 s, ${ks}s load)"
  [ "$verdict" = FAIL ] && log_problems "$(errlog_of "$lb" "$dir")"
  stop "$master"
}

run_quit() {  # run_quit LB
  local lb=$1 dir cpid ppid crc out code size sha t0 t1 exit_s="still running after 60 s" probe verdict=PASS
  start_big_backend || { record "$(name_of "$lb")" quit - FAIL "200 MB backend did not start"; return; }
  dir=$(new_dir "$lb-quit")
  set_variant "$lb" "$dir" big
  lb_start "$lb" "$dir" || { record "$(name_of "$lb")" quit - FAIL "balancer did not start"; stop "$master"; return; }
  curl -s --limit-rate 40M -o "$dir/download.bin" -w '%{http_code} %{size_download}' \
    "http://127.0.0.1:$lb_port/big.bin" >"$dir/curl.out" 2>&1 &
  cpid=$!; bg+=("$cpid")
  sleep 1
  t0=$(now_ms)
  lb_signal "$lb" "$dir" quit
  # a new connection right after QUIT (nginx refuses it: curl exit 7)
  ( sleep 0.3; curl -s -o /dev/null -w '%{http_code}' --max-time 3 "http://127.0.0.1:$lb_port/" >"$dir/probe.out" 2>/dev/null
    echo " exit=$?" >>"$dir/probe.out" ) &
  ppid=$!; bg+=("$ppid")
  for _ in $(seq 6000); do alive "$master" || { t1=$(now_ms); exit_s="$(( (t1 - t0) / 1000 )).$(printf '%03d' $(( (t1 - t0) % 1000 ))) s"; break; }; sleep 0.01; done
  wait "$cpid"; crc=$?
  wait "$ppid"
  out=$(cat "$dir/curl.out"); code=${out%% *}; size=${out##* }
  sha=$(sha256sum "$dir/download.bin" 2>/dev/null | cut -d' ' -f1)
  probe=$(tr -d '\n' <"$dir/probe.out" 2>/dev/null)
  case $probe in *"exit=7") probe="refused (curl 7)" ;; *"exit=28") probe="hung until timeout (curl 28)" ;; *"exit=0") probe="served ${probe%% *}" ;; *) probe="curl ${probe##*exit=}, status ${probe%% *}" ;; esac
  [ "$sha" = "$big_sha" ] && sha="match" || sha="MISMATCH"
  { [ "$crc" -eq 0 ] && [ "$code" = 200 ] && [ "$sha" = match ] && [ "$size" = 209715200 ]; } || verdict=FAIL
  case $exit_s in *" s") ;; *) verdict=FAIL ;; esac
  record "$(name_of "$lb")" quit - "$verdict" "curl-exit=$crc status=$code bytes=$size sha256=$sha" \
    "master-exit=${exit_s} after QUIT; new-connection-after-QUIT=$probe"
  [ "$verdict" = FAIL ] && log_problems "$(errlog_of "$lb" "$dir")"
  rm -f "$dir/download.bin"
  stop "$master"
}

run_badconfig() {  # run_badconfig LB MODE
  local lb=$1 mode=$2 dir bs conf trc src=0 hrc=- before after logged msg verdict=PASS
  bs=$(( secs < 8 ? secs : 8 ))
  dir=$(new_dir "$lb-badconfig-$mode")
  set_variant "$lb" "$dir" both
  lb_start "$lb" "$dir" || { record "$(name_of "$lb")" badconfig "$mode" FAIL "balancer did not start"; stop "$master"; return; }
  conf=$(conf_of "$lb" "$dir")
  cp "$conf" "$conf.good"
  if [ "$lb" = nginx ]; then
    echo 'reload_harness_bogus_directive on;' >>"$conf"
  else
    echo 'reload_harness_bogus_key = 1' >>"$conf"
  fi
  lb_test "$lb" "$dir"; trc=$?
  before=$(live_children "$master" | sort | paste -sd,)
  load_start "$mode" "$bs" "$dir/load.out"
  sleep 2
  lb_signal "$lb" "$dir" reload; src=$?
  if [ "$lb" = nginx ]; then
    # `nginx -s reload` parses the config first and refuses to signal a broken one; send the
    # HUP ourselves so the running master does attempt the reload (F17 in the research notes).
    kill -HUP "$master"; hrc=$?
  fi
  wait "$load_pid"
  load_parse "$dir/load.out" "$bs"
  after=$(live_children "$master" | sort | paste -sd,)
  if [ "$lb" = nginx ]; then
    msg=$(grep -m1 'unknown directive' "$(errlog_of "$lb" "$dir")")
  else
    msg=$(grep -m1 'unknown key' "$(errlog_of "$lb" "$dir")")
  fi
  logged=$([ -n "$msg" ] && echo yes || echo NO)
  { [ "$trc" -ne 0 ] && [ "$L_err" -eq 0 ] && [ "$L_non2xx" -eq 0 ] && [ "$logged" = yes ] && [ "$before" = "$after" ]; } || verdict=FAIL
  record "$(name_of "$lb")" badconfig "$mode" "$verdict" "$(load_summary) -t-exit=$trc -s-reload-exit=$src" \
    "$([ "$lb" = nginx ] && echo "kill-HUP-exit=$hrc ")workers-unchanged=$([ "$before" = "$after" ] && echo yes || echo NO) error-logged=$logged"
  echo "      -t said: $(grep -m1 -iE 'emerg|unknown' "$dir/test.out")"
  echo "      log said: ${msg:-nothing}"
  [ -s "$dir/signal.out" ] && echo "      -s reload said: $(head -1 "$dir/signal.out")"
  stop "$master"
}

# ---- main -----------------------------------------------------------------------------------
case $lb_sel in all) lbs=(prefork nginx) ;; broken) lbs=() ;; *) lbs=("$lb_sel") ;; esac
case $scen_sel in all) scens=(reload kill quit badconfig) ;; *) scens=("$scen_sel") ;; esac
run_broken=""
if [ "$lb_sel" = broken ] || { [ "$lb_sel" = all ] && { [ "$scen_sel" = all ] || [ "$scen_sel" = reload ]; }; }; then run_broken=1; fi

echo "reload_under_load: client=$client seconds=$secs reloads=$reloads interval=${interval}s workers=$workers connections=$concurrency"
echo "  (nproc=$(nproc), load average $(cut -d' ' -f1-3 /proc/loadavg); scratch $work)"
start_backends || exit 1
for s in "${scens[@]}"; do
  for lb in "${lbs[@]}"; do
    case $s in
      reload) run_reload "$lb" keepalive; run_reload "$lb" close ;;
      kill) run_kill "$lb" keepalive; run_kill "$lb" close ;;
      quit) run_quit "$lb" ;;
      badconfig) run_badconfig "$lb" keepalive; run_badconfig "$lb" close ;;
    esac
  done
done
sensitivity=""
if [ -n "$run_broken" ]; then
  broken_errors=0
  run_reload broken keepalive
  run_reload broken close
  if [ "$broken_errors" -gt 0 ]; then
    sensitivity="harness sensitivity: OK (broken mode lost $broken_errors connections)"
  else
    sensitivity="harness sensitivity: FAILED (broken mode showed no socket errors)"; failed=1
  fi
fi

echo
echo "==== summary (socket errors are wrk's connect/read/write/timeout; verdicts: PASS/FAIL," \
  "broken mode LOSES = expected) ===="
printf '%-17s %-9s %-9s %-5s %s\n' BALANCER SCENARIO MODE VERDICT FIGURES
for r in "${rows[@]}"; do echo "$r"; done
[ -n "$sensitivity" ] && echo "$sensitivity"
exit "$failed"
