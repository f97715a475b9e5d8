#!/usr/bin/env bash
# Quiver against the bare wtransport fan-out at one fixed offered rate, alternating, so that a
# noisy machine moves both alike (the full run measures each target once per rate).
#
#   bench/same-rate-ab.sh SUBSCRIBERS DELIVERIES_PER_SECOND ROUNDS [SECONDS]
#
# Each round starts `quiver serve` (development mode), then `bare-wt-fanout`, each pinned to
# core 0 at nice -10, and drives it with `quiver-bench load --rate` (one room, one publisher,
# 100-byte payloads, pinned to core 1) for SECONDS (default 5) after 2 s of warm-up. Prints one
# Markdown row per run: deliveries/s, server and generator CPU seconds, p50 / p99 / p99.9.
# Needs release builds (`cargo build --release -p quiver-cli -p quiver-bench`). Loopback only;
# every run and every wait is bounded.
set -euo pipefail
cd "$(dirname "$0")/.."
subs=$1; rate=$2; rounds=$3; secs=${4:-5}
pubs_per_sec=$(( rate / subs ))
[ "$pubs_per_sec" -ge 1 ] || { echo "rate must be at least SUBSCRIBERS" >&2; exit 2; }
secret=quiver-bench-secret-not-for-production
work=$(mktemp -d)
server=""
cleanup() { [ -n "$server" ] && kill "$server" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

# start KIND: launches the server, sets $server and $spec
start() {
  local kind=$1 tag ready
  : > "$work/out"
  if [ "$kind" = quiver ]; then
    QUIVER_LIMITS__COMMANDS_PER_SECOND=100000000 QUIVER_LIMITS__SUBSCRIBER_QUEUE=16384 \
      QUIVER_LIMITS__MAX_SESSIONS=30000 RUST_LOG=warn \
      nice -n -10 taskset -c 0 target/release/quiver serve --listen 127.0.0.1:0 \
      --http 127.0.0.1:0 --no-demo --cert-dir "$work/certs" --jwt-secret "$secret" \
      --self-signed > "$work/out" 2> "$work/err" &
    tag=QUIVER_READY
  else
    nice -n -10 taskset -c 0 target/release/bare-wt-fanout --listen 127.0.0.1:0 \
      > "$work/out" 2> "$work/err" &
    tag=BARE_READY
  fi
  server=$!
  for _ in $(seq 1 100); do grep -q "$tag" "$work/out" && break; sleep 0.1; done
  ready=$(grep "$tag" "$work/out" | sed "s/$tag //") || { echo "$kind never got ready" >&2; exit 1; }
  spec=$(KIND=$kind TOKEN=$token python3 -c '
import json, os, sys
d = json.loads(sys.stdin.read())
addr = "127.0.0.1:" + d["webtransport"].rsplit(":", 1)[1]
print(json.dumps({"kind": os.environ["KIND"], "sub_addr": addr, "pub_addr": addr,
                  "cert_sha256": d["cert_sha256"], "token": os.environ["TOKEN"]}))' <<< "$ready")
}

token=$(target/release/quiver token --jwt-secret "$secret" --tenant bench --user bench \
  --subscribe '>' --publish '>' --ttl 1h)
echo "| round | target | deliveries/s | server CPU (s) | generator CPU (s) | p50 / p99 / p99.9 |"
echo "| ---: | --- | ---: | ---: | ---: | --- |"
for round in $(seq 1 "$rounds"); do
  for kind in quiver bare; do
    start "$kind"
    nice -n -10 taskset -c 1 timeout 120 target/release/quiver-bench load --spec "$spec" \
      --server-pid "$server" --subs-per-room "$subs" --rate "$pubs_per_sec" \
      --duration "$secs" --warmup 2 > "$work/result.json"
    kill "$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true
    server=""
    ROUND=$round KIND=$kind python3 -c '
import json, os, sys
d = json.load(sys.stdin); l = d["latency"]
ms = lambda us: "%.1f ms" % (us / 1e3)
print("| %s | %s | %.0f | %.2f | %.2f | %s / %s / %s |" % (os.environ["ROUND"], os.environ["KIND"],
      d["deliveries_per_sec"], d["server_cpu_secs"], d["generator_cpu_secs"],
      ms(l["p50_us"]), ms(l["p99_us"]), ms(l["p999_us"])))' < "$work/result.json"
  done
done
