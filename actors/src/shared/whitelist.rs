//! Operators' whitelist (`--whitelist [PERMISSIONS@]CIDR`, Bitcoin Core's option and
//! permission names) as a sans-IO core: which permissions a peer's address has.
//!
//! - `noban`: never banned or charged for misbehaviour (violations are still logged and
//!   counted), accepted even inside a banned subnet, never evicted;
//! - `relay`: its transactions are pooled even when the pool is full;
//! - `download`: exempt from the upload rate limits when it downloads from us;
//! - `addr`: its addr messages are not rate-limited;
//! - `bloomfilter`: may use BIP37 filters even when we do not announce NODE_BLOOM.
//!
//! An entry without permissions gets `noban,relay,download` (Core's implicit default, less
//! `mempool`, which meshd has no use for).

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::bans::{canonical, parse_subnet};

/// A set of permissions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Permissions(u8);

impl Permissions {
    /// Never banned, charged or evicted.
    pub const NOBAN: Permissions = Permissions(1);
    /// Transactions pooled even when the pool is full.
    pub const RELAY: Permissions = Permissions(2);
    /// Exempt from upload rate limits.
    pub const DOWNLOAD: Permissions = Permissions(4);
    /// addr messages not rate-limited.
    pub const ADDR: Permissions = Permissions(8);
    /// BIP37 allowed without NODE_BLOOM.
    pub const BLOOMFILTER: Permissions = Permissions(16);

    const NAMES: [(&'static str, Permissions); 5] = [
        ("noban", Permissions::NOBAN),
        ("relay", Permissions::RELAY),
        ("download", Permissions::DOWNLOAD),
        ("addr", Permissions::ADDR),
        ("bloomfilter", Permissions::BLOOMFILTER),
    ];

    /// No permission.
    pub const NONE: Permissions = Permissions(0);

    /// Whether every permission of `other` is in `self`.
    pub fn has(self, other: Permissions) -> bool {
        self.0 & other.0 == other.0 && other.0 != 0
    }

    /// Both sets.
    pub fn union(self, other: Permissions) -> Permissions {
        Permissions(self.0 | other.0)
    }

    /// Whether empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The permission names, in Core's order.
    pub fn names(self) -> Vec<&'static str> {
        Permissions::NAMES
            .iter()
            .filter(|(_, p)| self.has(*p))
            .map(|(n, _)| *n)
            .collect()
    }
}

/// One `--whitelist` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WhitelistEntry {
    /// What the peers get.
    pub permissions: Permissions,
    /// Which peers.
    pub subnet: IpNet,
}

impl WhitelistEntry {
    /// Parses `[PERMISSION[,PERMISSION...]@]CIDR`, e.g. `noban,addr@10.0.0.0/8` or `::1`.
    pub fn parse(text: &str) -> Result<WhitelistEntry, String> {
        let (perms, net) = match text.rsplit_once('@') {
            Some((p, n)) => (Some(p), n),
            None => (None, text),
        };
        let subnet = parse_subnet(net).map_err(|e| format!("whitelist: {e}"))?;
        let permissions = match perms {
            None => Permissions::NOBAN
                .union(Permissions::RELAY)
                .union(Permissions::DOWNLOAD),
            Some(list) => {
                let mut set = Permissions::NONE;
                for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                    let p = Permissions::NAMES
                        .iter()
                        .find(|(n, _)| *n == name)
                        .map(|(_, p)| *p)
                        .ok_or_else(|| {
                            format!(
                                "whitelist: unknown permission {name:?} (known: noban, relay, download, addr, bloomfilter)"
                            )
                        })?;
                    set = set.union(p);
                }
                if set.is_empty() {
                    return Err(format!("whitelist: {text:?} names no permission"));
                }
                set
            }
        };
        Ok(WhitelistEntry {
            permissions,
            subnet,
        })
    }
}

/// The permissions `ip` has under `entries` (the union of every entry that covers it).
pub fn permissions_of(entries: &[WhitelistEntry], ip: IpAddr) -> Permissions {
    let ip = canonical(ip);
    entries
        .iter()
        .filter(|e| e.subnet.contains(&ip))
        .fold(Permissions::NONE, |acc, e| acc.union(e.permissions))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_parse_as_core_spells_them() {
        let e = WhitelistEntry::parse("noban,addr@10.0.0.0/8").unwrap();
        assert_eq!(e.permissions.names(), ["noban", "addr"]);
        assert_eq!(e.subnet.to_string(), "10.0.0.0/8");
        let d = WhitelistEntry::parse("127.0.0.1").unwrap();
        assert_eq!(d.permissions.names(), ["noban", "relay", "download"]);
        assert!(WhitelistEntry::parse("mint@10.0.0.0/8").is_err());
        assert!(WhitelistEntry::parse("@10.0.0.0/8").is_err());
        assert!(WhitelistEntry::parse("noban@nowhere").is_err());
    }

    #[test]
    fn permissions_are_the_union_of_covering_entries() {
        let list = vec![
            WhitelistEntry::parse("noban@10.0.0.0/8").unwrap(),
            WhitelistEntry::parse("bloomfilter@10.1.0.0/16").unwrap(),
        ];
        let p = permissions_of(&list, "10.1.2.3".parse().unwrap());
        assert!(p.has(Permissions::NOBAN) && p.has(Permissions::BLOOMFILTER));
        assert!(!p.has(Permissions::RELAY));
        let mapped = permissions_of(&list, "::ffff:10.9.9.9".parse().unwrap());
        assert_eq!(mapped.names(), ["noban"]);
        assert!(permissions_of(&list, "192.0.2.1".parse().unwrap()).is_empty());
    }
}
