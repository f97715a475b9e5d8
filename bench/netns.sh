#!/usr/bin/env bash
# Network for the head-of-line benchmark: a namespace for the servers, reached from the host over
# two veth pairs, one lossy (subscribers) and one clean (publishers), so loss hits only the
# subscriber's connection and every variant is measured through the same path.
#
#   host qvbl0 10.201.1.1 <-> qvbl1 10.201.1.2 (netns qvbench)   lossy: nftables random drop
#   host qvbc0 10.201.2.1 <-> qvbc1 10.201.2.2 (netns qvbench)   clean
#
# Loss is applied in both directions of the lossy pair with `numgen random mod 100 < N drop`,
# QUIC and TCP alike, on the *receiving* side (prerouting hooks on the host and in the
# namespace). Why there: an output hook sees TCP's TSO and QUIC's UDP-GSO super-packets before
# they are cut into wire-sized packets, so one drop would lose up to 64 KB at once. With the
# offloads turned off on the veth (ethtool), packets are segmented before crossing the pair, and
# the receiving side drops single packets.
#
# Usage: netns.sh check | up | loss PERCENT | rate MBIT [LATENCY_MS] | down   (root; down is idempotent)
set -euo pipefail
NS=qvbench
TABLE=qvbench

check() {
  [ "$(id -u)" = 0 ] || { echo "netns: not root" >&2; return 1; }
  command -v ethtool >/dev/null || echo "netns: no ethtool (optional)" >&2
  command -v ip >/dev/null || { echo "netns: no ip(8)" >&2; return 1; }
  command -v nft >/dev/null || { echo "netns: no nft(8)" >&2; return 1; }
}

down() {
  nft delete table inet "$TABLE" 2>/dev/null || true
  ip link del qvbl0 2>/dev/null || true
  ip link del qvbc0 2>/dev/null || true
  ip netns del "$NS" 2>/dev/null || true
}

up() {
  check
  down
  ip netns add "$NS"
  ip -n "$NS" link set lo up
  ip link add qvbl0 type veth peer name qvbl1 netns "$NS"
  ip link add qvbc0 type veth peer name qvbc1 netns "$NS"
  ip addr add 10.201.1.1/24 dev qvbl0
  ip addr add 10.201.2.1/24 dev qvbc0
  ip -n "$NS" addr add 10.201.1.2/24 dev qvbl1
  ip -n "$NS" addr add 10.201.2.2/24 dev qvbc1
  ip link set qvbl0 up
  ip link set qvbc0 up
  ip -n "$NS" link set qvbl1 up
  ip -n "$NS" link set qvbc1 up
  if command -v ethtool >/dev/null; then
    ethtool -K qvbl0 tso off gso off gro off tx-udp-segmentation off >/dev/null 2>&1 || true
    ip netns exec "$NS" ethtool -K qvbl1 tso off gso off gro off tx-udp-segmentation off >/dev/null 2>&1 || true
  else
    echo "netns: no ethtool, offloads stay on (a drop may hit a whole GSO burst)" >&2
  fi
  loss 0
}

# One table per side, recreated on every change so a rule never lingers.
loss() {
  local pct=$1
  [[ "$pct" =~ ^[0-9]+$ ]] && [ "$pct" -le 100 ] || { echo "netns: bad loss $pct" >&2; exit 2; }
  nft delete table inet "$TABLE" 2>/dev/null || true
  ip netns exec "$NS" nft delete table inet "$TABLE" 2>/dev/null || true
  if [ "$pct" -gt 0 ]; then
    nft -f - <<NFT
table inet $TABLE {
  chain in { type filter hook prerouting priority -300; iifname "qvbl0" numgen random mod 100 < $pct drop; }
}
NFT
    ip netns exec "$NS" nft -f - <<NFT
table inet $TABLE {
  chain in { type filter hook prerouting priority -300; iifname "qvbl1" numgen random mod 100 < $pct drop; }
}
NFT
  fi
}

# Caps the server's sending rate towards the subscriber (a congested link), or lifts the cap
# (RATE 0): tbf on the namespace side of the lossy pair. LATENCY_MS (default 100) bounds how long
# a packet may wait in tbf's queue: small, and the sender's own scheduler is where data waits.
rate() {
  local mbit=$1 latency=${2:-100}
  [[ "$mbit" =~ ^[0-9]+$ ]] || { echo "netns: bad rate $mbit" >&2; exit 2; }
  [[ "$latency" =~ ^[0-9]+$ ]] || { echo "netns: bad latency $latency" >&2; exit 2; }
  ip netns exec "$NS" tc qdisc del dev qvbl1 root 2>/dev/null || true
  if [ "$mbit" -gt 0 ]; then
    ip netns exec "$NS" tc qdisc add dev qvbl1 root tbf rate "${mbit}mbit" burst 32kb latency "${latency}ms"
  fi
}

case "${1:-}" in
  check) check ;;
  rate) rate "${2:?mbit}" "${3:-}" ;;
  up) up ;;
  loss) loss "${2:?percent}" ;;
  down) down ;;
  *) echo "usage: $0 check | up | loss PERCENT | rate MBIT [LATENCY_MS] | down" >&2; exit 2 ;;
esac
