//! The IPv4 default gateway, which PCP and NAT-PMP requests go to: read from the kernel's
//! routing table (`/proc/net/route` on Linux), as Core's `QueryDefaultGateway` asks netlink.
//! The parsing is sans-IO; only [`default_gateway_v4`] reads the file.

use std::net::Ipv4Addr;

/// The kernel's IPv4 routing table.
const ROUTE_TABLE: &str = "/proc/net/route";
/// `RTF_UP`: the route is usable.
const RTF_UP: u32 = 0x1;
/// `RTF_GATEWAY`: the route goes through a gateway.
const RTF_GATEWAY: u32 = 0x2;
/// Lines of the table read at most: a host has a handful of routes, and a router thousands
/// at most; past this the table is not a client's and nothing more is looked for.
const MAX_ROUTE_LINES: usize = 100_000;

/// The gateway of the default route with the lowest metric in `/proc/net/route`'s text.
/// Addresses there are hex of a u32 in host byte order.
pub fn parse_default_gateway(table: &str) -> Option<Ipv4Addr> {
    let mut best: Option<(u32, Ipv4Addr)> = None;
    for line in table.lines().skip(1).take(MAX_ROUTE_LINES) {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let [_, dest, gw, flags, _, _, metric, mask, ..] = cols.as_slice() else {
            continue;
        };
        let hex = |s: &str| u32::from_str_radix(s, 16).ok();
        let (Some(dest), Some(gw), Some(flags), Some(mask)) =
            (hex(dest), hex(gw), hex(flags), hex(mask))
        else {
            continue;
        };
        let metric = metric.parse::<u32>().unwrap_or(u32::MAX);
        if dest != 0 || mask != 0 || flags & (RTF_UP | RTF_GATEWAY) != RTF_UP | RTF_GATEWAY {
            continue;
        }
        // The kernel prints the address as a host-order u32: its bytes in memory are the
        // address in network order.
        let ip = Ipv4Addr::from(gw.to_ne_bytes());
        if best.is_none_or(|(m, _)| metric < m) {
            best = Some((metric, ip));
        }
    }
    best.map(|(_, ip)| ip)
}

/// The IPv4 default gateway of this host, if it has one.
pub fn default_gateway_v4() -> Option<Ipv4Addr> {
    std::fs::read_to_string(ROUTE_TABLE)
        .ok()
        .and_then(|t| parse_default_gateway(&t))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "\
Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth0\t0000000A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
eth0\t00000000\t0100000A\t0003\t0\t0\t100\t00000000\t0\t0\t0
wlan0\t00000000\t0101A8C0\t0003\t0\t0\t600\t00000000\t0\t0\t0
";

    #[test]
    fn the_default_route_with_the_lowest_metric_wins() {
        assert_eq!(
            parse_default_gateway(TABLE),
            Some(Ipv4Addr::new(10, 0, 0, 1))
        );
    }

    #[test]
    fn no_default_route_no_gateway() {
        let only_lan = TABLE.lines().take(2).collect::<Vec<_>>().join("\n");
        assert_eq!(parse_default_gateway(&only_lan), None);
        assert_eq!(parse_default_gateway(""), None);
        assert_eq!(parse_default_gateway("garbage\nx y z\n\u{0}\u{1}"), None);
        // A default route that is down is no gateway.
        let down = "h\neth0\t00000000\t0100000A\t0002\t0\t0\t0\t00000000\t0\t0\t0";
        assert_eq!(parse_default_gateway(down), None);
    }
}
