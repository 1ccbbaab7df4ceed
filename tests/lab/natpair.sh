#!/usr/bin/env bash
# natpair.sh - two hosts behind two NATs and a public relay, for the overlay's hole-punching
# and relay tests (needs root).
#
#   natpair.sh up TYPE_A TYPE_B   (re)build the lab; each TYPE is fullcone, portrestricted
#                                 or symmetric
#   natpair.sh down               delete the namespaces
#
# Five namespaces, nothing in the default one:
#   [a] eth0 10.0.1.10/24            [b] eth0 10.0.2.10/24          <- meshd nodes behind NATs
#     |  veth                          |  veth
#   [nata] lan0 10.0.1.1/24          [natb] lan0 10.0.2.1/24        <- nftables NATs
#          wan0 203.0.113.11/24             wan0 203.0.113.12/24
#     |  veth                          |  veth
#   [pub] br0 203.0.113.1/24 (a bridge joining both WANs)           <- the public relay
#
# NAT behaviour, for TCP and UDP alike (nftables in each [nat*]):
#   fullcone        endpoint-independent mapping (the source port kept) and filtering (any
#                   host may send to a mapped port);
#   portrestricted  endpoint-independent mapping, address-and-port-dependent filtering (only
#                   replies to what the host sent: conntrack);
#   symmetric       a random port per destination (fully-random SNAT) and the same filtering
#                   as portrestricted: hole punching cannot guess the port.
# Env: NATPAIR_PREFIX (namespace prefix, default "mshp-").
set -euo pipefail

P=${NATPAIR_PREFIX:-mshp-}
NS_PUB=${P}pub
TYPES="fullcone portrestricted symmetric"
MAP_TIMEOUT=120

die() { echo "natpair: $*" >&2; exit 1; }
nsx() { local ns=$1; shift; ip netns exec "$ns" "$@"; }
ns_exists() { ip netns list | awk '{print $1}' | grep -qx "$1"; }

# nat_rules TYPE WAN_IP LAN_NET HOST_IP
nat_rules() {
  local type=$1 wan=$2 lan=$3 host=$4 T=$MAP_TIMEOUT
  cat <<EOR
table ip natpair {
  set mapped_udp { type inet_service; flags timeout; timeout ${T}s; }
  set mapped_tcp { type inet_service; flags timeout; timeout ${T}s; }
  chain filter_in {
    type filter hook input priority filter; policy accept;
    iifname "wan0" ct state new meta l4proto { udp, tcp } drop
  }
  chain nat_pre {
    type nat hook prerouting priority dstnat; policy accept;
EOR
  if [ "$type" = fullcone ]; then
    echo "    iifname \"wan0\" ip daddr $wan udp dport @mapped_udp dnat to $host"
    echo "    iifname \"wan0\" ip daddr $wan tcp dport @mapped_tcp dnat to $host"
  fi
  echo "  }"
  echo "  chain nat_post {"
  echo "    type nat hook postrouting priority srcnat; policy accept;"
  case $type in
    symmetric) echo "    oifname \"wan0\" ip saddr $lan snat to $wan fully-random" ;;
    *) echo "    oifname \"wan0\" ip saddr $lan snat to $wan" ;;
  esac
  echo "  }"
  echo "  chain filter_fwd {"
  echo "    type filter hook forward priority filter; policy drop;"
  if [ "$type" = fullcone ]; then
    echo '    iifname "lan0" oifname "wan0" meta l4proto udp update @mapped_udp { udp sport }'
    echo '    iifname "lan0" oifname "wan0" meta l4proto tcp update @mapped_tcp { tcp sport }'
  fi
  echo '    ct state established,related accept'
  echo '    iifname "lan0" oifname "wan0" accept'
  [ "$type" = fullcone ] && echo '    iifname "wan0" ct status dnat accept'
  echo "  }"
  echo "}"
}

# side NAME TYPE WAN_IP SUBNET(1|2)
side() {
  local name=$1 type=$2 wan=$3 n=$4
  local host=${P}$name nat=${P}nat$name
  ip netns add "$host"; ip netns add "$nat"
  local ns
  for ns in "$host" "$nat"; do
    nsx "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
    ip -n "$ns" link set lo up
  done
  ip link add "${P}w$name" type veth peer name wan0 netns "$nat"
  ip link set "${P}w$name" netns "$NS_PUB"
  ip -n "$NS_PUB" link set "${P}w$name" master br0 up
  ip -n "$nat" addr add "$wan/24" dev wan0
  ip -n "$nat" link set wan0 up
  ip -n "$nat" link add lan0 type veth peer name eth0 netns "$host"
  ip -n "$nat" addr add "10.0.$n.1/24" dev lan0
  ip -n "$nat" link set lan0 up
  ip -n "$host" addr add "10.0.$n.10/24" dev eth0
  ip -n "$host" link set eth0 up
  ip -n "$host" route add default via "10.0.$n.1"
  nsx "$nat" sysctl -qw net.ipv4.ip_forward=1
  nat_rules "$type" "$wan" "10.0.$n.0/24" "10.0.$n.10" | nsx "$nat" nft -f - \
    || die "nft ruleset for $type failed"
}

cmd_down() {
  local ns
  for ns in "$NS_PUB" "${P}a" "${P}b" "${P}nata" "${P}natb"; do
    if ns_exists "$ns"; then
      ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
      ip netns del "$ns" 2>/dev/null || true
    fi
  done
}

cmd_up() {
  local ta=${1:-} tb=${2:-}
  for t in "$ta" "$tb"; do
    case " $TYPES " in *" $t "*) ;; *) die "unknown TYPE '$t' (one of: $TYPES)";; esac
  done
  command -v nft >/dev/null || die "nftables missing (apt-get install nftables)"
  cmd_down
  ip netns add "$NS_PUB"
  nsx "$NS_PUB" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
  ip -n "$NS_PUB" link set lo up
  ip -n "$NS_PUB" link add br0 type bridge
  ip -n "$NS_PUB" addr add 203.0.113.1/24 dev br0
  ip -n "$NS_PUB" link set br0 up
  side a "$ta" 203.0.113.11 1
  side b "$tb" 203.0.113.12 2
}

case ${1:-} in
  up) shift; cmd_up "$@" ;;
  down) cmd_down ;;
  *) die "usage: natpair.sh up TYPE_A TYPE_B | down" ;;
esac
