#!/usr/bin/env bash
# Run ../shared/bench/anchors.sh with prefork-lb beside nginx and HAProxy, in one run.
#   loadtest/anchors.sh [http|stream] [extra anchors.sh options, e.g. --close --rounds 3]
# Needs nginx (nginx-light), haproxy, wrk (and iperf3 for stream); installs nothing.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
anchors=${ANCHORS:-$repo/../shared/bench/anchors.sh}
mode=${1:-http}; [ $# -gt 0 ] && shift
missing=()
for tool in nginx haproxy wrk; do command -v "$tool" >/dev/null || missing+=("$tool"); done
[ -x "$anchors" ] || [ -f "$anchors" ] || missing+=("$anchors")
if [ ${#missing[@]} -gt 0 ]; then
  echo "missing: ${missing[*]} (apt-get install nginx-light haproxy wrk)" >&2; exit 2
fi
lb="$repo/.venv/bin/prefork-lb"
[ -x "$lb" ] || { echo "run 'make' targets first: $lb is missing (make test builds .venv)" >&2; exit 2; }
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
conf=bench.toml; [ "$mode" = stream ] && conf=bench-stream.toml
cp "$here/$conf" "$scratch/"
bash "$anchors" "$mode" --lb "$lb -c $scratch/$conf" "$@"  # no exec: the trap cleans up
