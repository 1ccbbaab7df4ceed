#!/usr/bin/env bash
# natlab.sh - the network-namespace NAT lab meshd's STUN tests run in (needs root).
#
#   natlab.sh up TYPE     (re)build the lab: TYPE is open, openfw, fullcone, restricted,
#                         portrestricted, symmetric or udpblocked
#   natlab.sh miniupnpd   start miniupnpd (PCP, NAT-PMP and UPnP IGD) in [nat] on lan0, after
#                         `up` with a cone or symmetric TYPE; forwarded ports reach [cli]
#   natlab.sh down        stop coturn and miniupnpd, delete the namespaces
#
# Three namespaces, nothing in the default one:
#   [cli] eth0 10.0.0.10/24 (open/openfw: 198.51.100.10/24)      <- meshd runs here
#     |  veth
#   [nat] lan0 10.0.0.1/24 (open/openfw: 198.51.100.1/24), wan0 203.0.113.254/24 (nftables NAT)
#     |  veth
#   [pub] pub0 203.0.113.1 + 203.0.113.2 (coturn, ports 3478 and 3479: RFC 5780), 203.0.113.3 (nothing)
#
# NAT types are built with nftables in [nat]: cone types keep the source port (SNAT) and use
# sets of mapped ports / contacted addresses for endpoint-independent / address-dependent
# filtering; symmetric randomises ports; openfw is no NAT with a stateful firewall.
# Env: NATLAB_PREFIX (namespace prefix, default "mshd-"), NATLAB_STATE (default
# /run/meshd-natlab-PREFIX).
set -euo pipefail

P=${NATLAB_PREFIX:-mshd-}
NS_PUB=${P}pub
NS_NAT=${P}nat
NS_CLI=${P}cli
STATE=${NATLAB_STATE:-/run/meshd-natlab-$P}
UDP_TIMEOUT=120
STUN1=203.0.113.1
STUN2=203.0.113.2
PEER=203.0.113.3
WAN=203.0.113.254
LAN_GW=10.0.0.1
CLI_IP=10.0.0.10
OPEN_GW=198.51.100.1
OPEN_CLI=198.51.100.10
TYPES="open openfw fullcone restricted portrestricted symmetric udpblocked"

die() { echo "natlab: $*" >&2; exit 1; }
nsx() { local ns=$1; shift; ip netns exec "$ns" "$@"; }
ns_exists() { ip netns list | awk '{print $1}' | grep -qx "$1"; }
alive() { [ -r "/proc/$1/stat" ] && ! awk '{ if ($3 == "Z") exit 0; exit 1 }' "/proc/$1/stat" 2>/dev/null; }

stop_coturn() {
  local pidf=$STATE/turnserver.pid pid
  if [ -s "$pidf" ]; then
    pid=$(cat "$pidf")
    if alive "$pid"; then
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 30); do alive "$pid" || break; sleep 0.1; done
      alive "$pid" && kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$pidf"
  fi
}

stop_miniupnpd() {
  local pidf=$STATE/miniupnpd.pid pid
  if [ -s "$pidf" ]; then
    pid=$(cat "$pidf")
    if alive "$pid"; then
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 30); do alive "$pid" || break; sleep 0.1; done
      alive "$pid" && kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$pidf"
  fi
}

# miniupnpd in [nat]: its nftables chains (one inet table for filter and NAT), a forward
# rule in the lab's table for the connections it DNATs, and the STUN servers' answers let
# in to [nat] itself (miniupnpd checks with STUN that its WAN address is really public:
# 203.0.113.254 is a documentation address, which it would otherwise refuse to map on).
cmd_miniupnpd() {
  ns_exists "$NS_NAT" || die "the lab is not up"
  mkdir -p "$STATE"
  stop_miniupnpd
  nsx "$NS_NAT" nft -f - <<EON
table inet miniupnpd_lab {
  chain forward { type filter hook forward priority 0; policy accept; jump miniupnpd; }
  chain miniupnpd { }
  chain prerouting { type nat hook prerouting priority -100; policy accept; jump prerouting_miniupnpd; }
  chain postrouting { type nat hook postrouting priority 100; policy accept; jump postrouting_miniupnpd; }
  chain prerouting_miniupnpd { }
  chain postrouting_miniupnpd { }
}
EON
  nsx "$NS_NAT" nft insert rule ip natlab filter_in iifname wan0 udp sport '{ 3478, 3479 }' accept
  nsx "$NS_NAT" nft add rule ip natlab filter_fwd iifname wan0 ct status dnat accept
  cat > "$STATE/miniupnpd.conf" <<EOC
ext_ifname=wan0
listening_ip=lan0
http_port=0
enable_natpmp=yes
enable_upnp=yes
secure_mode=yes
system_uptime=yes
ext_perform_stun=yes
ext_stun_host=$STUN1
ext_stun_port=3478
upnp_table_name=miniupnpd_lab
upnp_nat_table_name=miniupnpd_lab
upnp_forward_chain=miniupnpd
upnp_nat_chain=prerouting_miniupnpd
upnp_nat_postrouting_chain=postrouting_miniupnpd
lease_file=$STATE/miniupnpd.leases
uuid=3a1c0d4e-0000-4000-8000-00000000feed
min_lifetime=120
max_lifetime=86400
allow 1024-65535 10.0.0.0/24 1024-65535
deny 0-65535 0.0.0.0/0 0-65535
EOC
  setsid ip netns exec "$NS_NAT" miniupnpd -f "$STATE/miniupnpd.conf" -d -P "$STATE/miniupnpd.own.pid" \
    > "$STATE/miniupnpd.log" 2>&1 < /dev/null &
  echo $! > "$STATE/miniupnpd.pid"
  for _ in $(seq 1 200); do
    if grep -q "Listening for NAT-PMP/PCP" "$STATE/miniupnpd.log" \
       && grep -q "Port forwarding is now enabled" "$STATE/miniupnpd.log"; then
      echo "natlab: miniupnpd up (log $STATE/miniupnpd.log)"
      return 0
    fi
    alive "$(cat "$STATE/miniupnpd.pid")" || break
    sleep 0.1
  done
  cat "$STATE/miniupnpd.log" >&2
  stop_miniupnpd
  die "miniupnpd did not start"
}

cmd_down() {
  stop_miniupnpd
  stop_coturn
  local ns pid
  for ns in "$NS_CLI" "$NS_NAT" "$NS_PUB"; do
    if ns_exists "$ns"; then
      for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
      ip netns del "$ns"
    fi
  done
}

nat_rules() {
  local type=$1 T=$UDP_TIMEOUT
  cat <<EOR
table ip natlab {
  set mapped { type inet_service; flags timeout; timeout ${T}s; }
  set contacted { type ipv4_addr . inet_service; flags timeout; timeout ${T}s; }
  chain filter_in {
    type filter hook input priority filter; policy accept;
    iifname "wan0" ct state new meta l4proto { udp, tcp } drop
  }
  chain nat_pre {
    type nat hook prerouting priority dstnat; policy accept;
EOR
  case $type in
    fullcone|restricted) echo "    iifname \"wan0\" ip daddr $WAN udp dport @mapped dnat to $CLI_IP" ;;
  esac
  echo "  }"
  echo "  chain nat_post {"
  echo "    type nat hook postrouting priority srcnat; policy accept;"
  case $type in
    open|openfw) ;;
    symmetric)
      echo "    oifname \"wan0\" ip saddr 10.0.0.0/24 meta l4proto udp snat to $WAN fully-random"
      echo "    oifname \"wan0\" ip saddr 10.0.0.0/24 snat to $WAN" ;;
    *) echo "    oifname \"wan0\" ip saddr 10.0.0.0/24 snat to $WAN" ;;
  esac
  echo "  }"
  echo "  chain filter_fwd {"
  echo "    type filter hook forward priority filter; policy drop;"
  case $type in
    fullcone|restricted) echo '    iifname "lan0" oifname "wan0" meta l4proto udp update @mapped { udp sport }' ;;
  esac
  [ "$type" = restricted ] && echo '    iifname "lan0" oifname "wan0" meta l4proto udp update @contacted { ip daddr . udp sport }'
  echo '    ct state established,related accept'
  case $type in
    open) echo '    accept' ;;
    udpblocked)
      echo '    iifname "lan0" meta l4proto udp drop'
      echo '    iifname "lan0" oifname "wan0" accept' ;;
    fullcone)
      echo '    iifname "lan0" oifname "wan0" accept'
      echo '    iifname "wan0" ct status dnat accept' ;;
    restricted)
      echo '    iifname "lan0" oifname "wan0" accept'
      echo '    iifname "wan0" ct status dnat ip saddr . udp dport @contacted accept' ;;
    *) echo '    iifname "lan0" oifname "wan0" accept' ;;
  esac
  echo "  }"
  echo "}"
}

start_coturn() {
  mkdir -p "$STATE"
  nsx "$NS_PUB" turnserver -n --stun-only --no-tls --no-dtls --no-cli \
      -L "$STUN1" -L "$STUN2" -p 3478 --alt-listening-port 3479 \
      --log-file "$STATE/turnserver.log" --simple-log --userdb "$STATE/turndb" \
      --pidfile "$STATE/turnserver.pid.coturn" >"$STATE/turnserver.out" 2>&1 &
  echo $! >"$STATE/turnserver.pid"
  local n
  for _ in $(seq 1 50); do
    n=$(nsx "$NS_PUB" ss -Hlun 2>/dev/null | grep -cE ":(3478|3479)\b" || true)
    [ "$n" -ge 4 ] && return 0
    sleep 0.1
  done
  cat "$STATE/turnserver.out" >&2
  return 1
}

cmd_up() {
  local type=${1:-}
  case " $TYPES " in *" $type "*) ;; *) die "unknown TYPE '$type' (one of: $TYPES)";; esac
  command -v turnserver >/dev/null || die "coturn missing (apt-get install coturn)"
  command -v nft >/dev/null || die "nftables missing (apt-get install nftables)"
  cmd_down
  mkdir -p "$STATE"
  ip netns add "$NS_PUB"; ip netns add "$NS_NAT"; ip netns add "$NS_CLI"
  local ns
  for ns in "$NS_PUB" "$NS_NAT" "$NS_CLI"; do
    nsx "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
    ip -n "$ns" link set lo up
  done
  ip -n "$NS_PUB" link add pub0 type veth peer name wan0 netns "$NS_NAT"
  ip -n "$NS_CLI" link add eth0 type veth peer name lan0 netns "$NS_NAT"
  ip -n "$NS_PUB" addr add "$STUN1/24" dev pub0
  ip -n "$NS_PUB" addr add "$STUN2/24" dev pub0
  ip -n "$NS_PUB" addr add "$PEER/24" dev pub0
  ip -n "$NS_PUB" link set pub0 up
  ip -n "$NS_NAT" addr add "$WAN/24" dev wan0
  ip -n "$NS_NAT" link set wan0 up
  case $type in
    open|openfw)
      ip -n "$NS_NAT" addr add "$OPEN_GW/24" dev lan0
      ip -n "$NS_CLI" addr add "$OPEN_CLI/24" dev eth0
      ip -n "$NS_CLI" link set eth0 up
      ip -n "$NS_CLI" route add default via "$OPEN_GW"
      ip -n "$NS_PUB" route add 198.51.100.0/24 via "$WAN" ;;
    *)
      ip -n "$NS_NAT" addr add "$LAN_GW/24" dev lan0
      ip -n "$NS_CLI" addr add "$CLI_IP/24" dev eth0
      ip -n "$NS_CLI" link set eth0 up
      ip -n "$NS_CLI" route add default via "$LAN_GW" ;;
  esac
  ip -n "$NS_NAT" link set lan0 up
  nsx "$NS_NAT" sysctl -qw net.ipv4.ip_forward=1
  nsx "$NS_NAT" sysctl -qw net.netfilter.nf_conntrack_udp_timeout="$UDP_TIMEOUT" \
      net.netfilter.nf_conntrack_udp_timeout_stream="$UDP_TIMEOUT" 2>/dev/null || true
  if ! nat_rules "$type" | nsx "$NS_NAT" nft -f -; then cmd_down; die "nft ruleset for $type failed"; fi
  if ! start_coturn; then cmd_down; die "coturn failed to start"; fi
  echo "natlab up: $type"
}

case "${1:-}" in
  up) shift; cmd_up "$@" ;;
  miniupnpd) cmd_miniupnpd ;;
  down) cmd_down ;;
  *) sed -n '2,8p' "$0"; exit 2 ;;
esac
