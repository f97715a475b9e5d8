#!/usr/bin/env bash
# Plots the Grafana dashboard's main panels from a real run, where neither Grafana nor
# Prometheus can be installed: starts `quiver serve` (one history namespace, `bench`), drives it
# with `quiver-bench load` in three phases (one busy room; ten rooms; a saturating burst) with
# quiet gaps between, scrapes /metrics every second throughout, and writes the PNG
# (`quiver-bench scrape`). Usage: bench/metrics-snapshot.sh [OUT.png]   (PROFILE=release to
# use release binaries; both must be built: cargo build [--release] -p quiver-cli -p quiver-bench)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=target/${PROFILE:-debug}
out=${1:-bench/results/$(date -u +%F)-metrics.png}
work=$(mktemp -d)
server=
scraper=
cleanup() {
  [ -n "$scraper" ] && kill "$scraper" 2>/dev/null
  [ -n "$server" ] && kill "$server" 2>/dev/null
  wait 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

secret=$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')
cat >"$work/quiver.toml" <<TOML
[[namespaces]]
name = "bench"
history_size = 100
TOML
QUIVER_LIMITS__COMMANDS_PER_SECOND=100000000 QUIVER_LIMITS__SUBSCRIBER_QUEUE=16384 \
  "$bin/quiver" serve --config "$work/quiver.toml" --listen 127.0.0.1:0 --http 127.0.0.1:0 \
  --no-demo --cert-dir "$work" --jwt-secret "$secret" --self-signed \
  >"$work/out" 2>"$work/log" &
server=$!
for _ in $(seq 100); do
  grep -q '^QUIVER_READY ' "$work/out" 2>/dev/null && break
  sleep 0.1
done
ready=$(grep '^QUIVER_READY ' "$work/out" | head -1 | cut -d' ' -f2-)
[ -n "$ready" ] || { echo "quiver did not start:" >&2; cat "$work/log" >&2; exit 1; }
field() { echo "$ready" | sed -nE "s/.*\"$1\":\"([^\"]*)\".*/\1/p"; }
wt=$(field webtransport)
http=$(field http)
hash=$(field cert_sha256)
token=$("$bin/quiver" token --tenant bench --user load --subscribe '>' --publish '>' \
  --jwt-secret "$secret")
spec="{\"kind\":\"quiver\",\"sub_addr\":\"$wt\",\"pub_addr\":\"$wt\",\"cert_sha256\":\"$hash\",\"token\":\"$token\"}"

# The scrape ends when its stdin (this fifo) closes, after the last phase and a quiet tail.
mkfifo "$work/stop"
"$bin/quiver-bench" scrape --http "$http" --seconds 600 --out "$out" <"$work/stop" &
scraper=$!
exec 3>"$work/stop"
load() { "$bin/quiver-bench" load --spec "$spec" --warmup 0.5 "$@" >/dev/null; }
sleep 3
load --rooms 1 --subs-per-room 100 --publishers 1 --rate 500 --duration 10
sleep 3
load --rooms 10 --subs-per-room 20 --publishers 4 --rate 2000 --duration 10
sleep 3
load --rooms 4 --subs-per-room 50 --publishers 2 --duration 6
sleep 3
exec 3>&-
wait "$scraper"
scraper=
echo "metrics-snapshot: $out"
