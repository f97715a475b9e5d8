#!/usr/bin/env bash
# Does the server give memory back after a churn of idle sessions? (issue 11 §6)
#
#   bench/churn-memory.sh SESSIONS ROUNDS LABEL@BINARY[,ENV=VALUE...] ...
#
# For each build: start `quiver serve` (development mode, no demo) pinned to core 0, read its
# RSS; then ROUNDS times open SESSIONS idle sessions with `quiver-bench connections` (pinned to
# core 1), read the RSS, close them, wait until the server counts zero sessions and 5 s more,
# read the RSS. Prints one Markdown row per build. Loopback only; every wait is bounded.
set -euo pipefail
sessions=$1; rounds=$2; shift 2
bench=${QUIVER_BENCH:-target/release/quiver-bench}

rss_mb() { awk '/^VmRSS/ {printf "%.1f", $2/1024}' "/proc/$1/status"; }
active() {
  curl -s "http://127.0.0.1:$1/metrics" |
    awk '/^quiver_sessions_active/ {s += $2} END {print s + 0}'
}
wait_active() { # port want
  for _ in $(seq 1 600); do
    [ "$(active "$1")" = "$2" ] && return 0
    sleep 0.1
  done
  echo "sessions never reached $2" >&2
  return 1
}

echo "| build | idle | with $sessions sessions | after close, per round |"
echo "| --- | ---: | ---: | --- |"
for build in "$@"; do
  label=${build%%@*}
  rest=${build#*@}
  IFS=, read -r binary envs <<<"$rest"
  dir=$(mktemp -d)
  udp=$((20000 + RANDOM % 20000))
  http=$((40000 + RANDOM % 20000))
  # shellcheck disable=SC2086
  env ${envs//,/ } taskset -c 0 "$binary" serve --cert-dir "$dir" --no-demo \
    --listen "127.0.0.1:$udp" --http "127.0.0.1:$http" >"$dir/log" 2>&1 &
  pid=$!
  for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$http/healthz" >/dev/null && break; sleep 0.1; done
  boot=$(curl -s "http://127.0.0.1:$http/dev/bootstrap")
  token=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])' <<<"$boot")
  hash=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["cert_sha256"])' <<<"$boot")
  spec="{\"kind\":\"quiver\",\"sub_addr\":\"127.0.0.1:$udp\",\"pub_addr\":\"127.0.0.1:$udp\",\"cert_sha256\":\"$hash\",\"token\":\"$token\"}"
  idle=$(rss_mb "$pid")
  after=()
  loaded=
  for _ in $(seq 1 "$rounds"); do
    # The generator holds its sessions until its stdin closes (the sleep ends).
    (sleep 600 | taskset -c 1 "$bench" connections --spec "$spec" --sessions "$sessions" --hold 120 >/dev/null 2>&1) &
    holder=$!
    wait_active "$http" "$sessions"
    loaded=$(rss_mb "$pid")
    pkill -P "$holder" sleep 2>/dev/null || true
    wait "$holder" || true
    wait_active "$http" 0
    sleep 5
    after+=("$(rss_mb "$pid")")
  done
  kill "$pid"; wait "$pid" 2>/dev/null || true
  rm -rf "$dir"
  echo "| $label | $idle MB | $loaded MB | ${after[*]} MB |"
done
