//! Network profiles: everything that differs between the Bitcoin-family networks meshd speaks.
//!
//! A [`NetworkId`] names a network (BTC mainnet, testnet3, testnet4, signet, regtest; BSV
//! mainnet, testnet, STN, regtest) and its [`Profile`] carries the wire magic, default port,
//! genesis header, DNS seeds, the protocol version and user agent we announce, message-size
//! limits and the id of the difficulty rule the header chain applies.
//!
//! # Message-size limits
//! BTC follows Bitcoin Core: one limit, 4,000,000 bytes, for every message.
//!
//! BSV follows the BSV node: ordinary messages are held to a small receive limit (2 MiB, which
//! we announce in our `protoconf`), while block content (`block`, `cmpctblock`) and
//! transactions (`tx`) may be far larger, up to a configured ceiling
//! (`max-block-message-size`, default 256 MiB). We do not implement the BSV "extmsg" header for
//! messages above 4 GiB; such a length cannot be expressed in a classic header and is refused.
//! What we *send* to a BSV peer stays within 1 MiB (the legacy limit) until its `protoconf`
//! raises that.

use std::fmt;
use std::str::FromStr;

use bitcoin::block::Header;
use bitcoin::p2p::{Magic, ServiceFlags};
use bitcoin::Network;
use serde::{Deserialize, Serialize};

use crate::constants::{
    BSV_DEFAULT_MAX_BLOCK_MESSAGE, BSV_DEFAULT_RECV_PAYLOAD, BSV_LEGACY_PAYLOAD,
    BSV_MAX_RELAYED_TX, BSV_PROTOCOL_VERSION, BTC_MAX_PAYLOAD, BTC_MAX_RELAYED_TX,
    BTC_PROTOCOL_VERSION,
};

/// The chain family: decides message-size rules and `protoconf`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Chain {
    /// Bitcoin (BTC).
    Btc,
    /// Bitcoin SV (BSV).
    Bsv,
}

/// One of the networks meshd can join.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum NetworkId {
    /// BTC mainnet.
    Mainnet,
    /// BTC testnet3.
    Testnet3,
    /// BTC testnet4 (BIP94).
    Testnet4,
    /// BTC default signet.
    Signet,
    /// BTC regtest.
    Regtest,
    /// BSV mainnet.
    BsvMainnet,
    /// BSV testnet.
    BsvTestnet,
    /// BSV scaling test network.
    BsvStn,
    /// BSV regtest.
    BsvRegtest,
}

/// The difficulty rule a network's header chain follows (checked by the Sync issue's chain).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DifficultyRule {
    /// 2016-block retarget, no exceptions (BTC mainnet).
    BtcMainnet,
    /// 2016-block retarget plus the 20-minute minimum-difficulty exception (testnet3).
    BtcTestnet3,
    /// BIP94: testnet3's rule with the time-warp fix and retarget from the period's first block.
    BtcTestnet4,
    /// Signet: 2016-block retarget; blocks also carry a signet challenge solution.
    BtcSignet,
    /// No retargeting; minimum difficulty everywhere (regtest, both chains).
    Regtest,
    /// BSV mainnet and testnets: the DAA of the November 2017 upgrade (144-block window).
    BsvDaa,
}

impl NetworkId {
    /// Every network, in display order.
    pub const ALL: [NetworkId; 9] = [
        NetworkId::Mainnet,
        NetworkId::Testnet3,
        NetworkId::Testnet4,
        NetworkId::Signet,
        NetworkId::Regtest,
        NetworkId::BsvMainnet,
        NetworkId::BsvTestnet,
        NetworkId::BsvStn,
        NetworkId::BsvRegtest,
    ];

    /// The name used on the command line, in config files and in data-dir paths.
    pub fn name(self) -> &'static str {
        match self {
            NetworkId::Mainnet => "mainnet",
            NetworkId::Testnet3 => "testnet3",
            NetworkId::Testnet4 => "testnet4",
            NetworkId::Signet => "signet",
            NetworkId::Regtest => "regtest",
            NetworkId::BsvMainnet => "bsv-mainnet",
            NetworkId::BsvTestnet => "bsv-testnet",
            NetworkId::BsvStn => "bsv-stn",
            NetworkId::BsvRegtest => "bsv-regtest",
        }
    }

    /// The profile of this network.
    pub fn profile(self) -> Profile {
        Profile::of(self)
    }
}

impl fmt::Display for NetworkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Error for a network name meshd does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown network {0:?} (expected one of: mainnet, testnet3, testnet4, signet, regtest, bsv-mainnet, bsv-testnet, bsv-stn, bsv-regtest)")]
pub struct UnknownNetwork(pub String);

impl FromStr for NetworkId {
    type Err = UnknownNetwork;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let id = match s {
            "mainnet" | "main" | "bitcoin" => NetworkId::Mainnet,
            "testnet3" | "testnet" => NetworkId::Testnet3,
            "testnet4" => NetworkId::Testnet4,
            "signet" => NetworkId::Signet,
            "regtest" => NetworkId::Regtest,
            "bsv-mainnet" | "bsv" => NetworkId::BsvMainnet,
            "bsv-testnet" => NetworkId::BsvTestnet,
            "bsv-stn" => NetworkId::BsvStn,
            "bsv-regtest" => NetworkId::BsvRegtest,
            other => return Err(UnknownNetwork(other.to_string())),
        };
        Ok(id)
    }
}

impl TryFrom<String> for NetworkId {
    type Error = UnknownNetwork;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<NetworkId> for String {
    fn from(id: NetworkId) -> String {
        id.name().to_string()
    }
}

/// Payload limits of one network, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PayloadLimits {
    /// Largest payload accepted for ordinary messages.
    pub general: u32,
    /// Largest payload accepted for block and transaction content (`block`, `cmpctblock`,
    /// `tx`). Equal to `general` on BTC.
    pub bulk: u32,
    /// Largest ordinary payload we send before the peer announces a larger limit.
    pub send_default: u32,
    /// Largest `tx` we read; a longer one is skipped unread, without points.
    pub relayed_tx: u32,
    /// `bulk` is our own policy (BSV's `max-block-message-size`), below what the chain
    /// allows: a block we asked for above it is honest and skipped free. Where it is the
    /// chain's own bound (BTC), a larger block is invalid and the message oversized.
    pub bulk_is_policy: bool,
}

impl PayloadLimits {
    /// The limit that applies to a frame with this command.
    pub fn for_command(&self, command: &str) -> u32 {
        if command == "getblocktxn" {
            // On BTC a longer one than `getblocktxn()` is still a message (Core reads up
            // to its message limit and fails to decode it): the reader skips it as
            // overlong. On BSV the SV node's own bound is the frame limit.
            self.getblocktxn().max(self.general)
        } else if is_bulk_command(command) {
            self.bulk
        } else {
            self.general
        }
    }

    /// The longest `getblocktxn`: on BTC one index for each of the 65,536 transactions a
    /// 16-bit index reaches, a byte each (a gap of three bytes, 253 or more, uses up 253
    /// indexes: it never makes a request longer); on BSV the SV node's estimate, six bytes for
    /// each transaction of at least 215 bytes the largest block we take can hold
    /// (bitcoin-sv src/protocol.cpp, `GetMaxMessageLength`), never below the ordinary limit.
    pub fn getblocktxn(&self) -> u32 {
        if self.bulk_is_policy {
            (self.bulk / BSV_GETBLOCKTXN_MIN_TX_SIZE)
                .saturating_mul(6)
                .saturating_add(GETBLOCKTXN_FIXED_LEN)
                .max(self.general)
        } else {
            (GETBLOCKTXN_FIXED_LEN + (1 << 16)).min(self.general)
        }
    }
}

/// A `getblocktxn`'s block hash and the longest compact size of its count.
const GETBLOCKTXN_FIXED_LEN: u32 = 32 + 9;
/// The SV node's "minimum realistic transaction size" sizing its `getblocktxn` limit.
const BSV_GETBLOCKTXN_MIN_TX_SIZE: u32 = 215;

/// Commands whose payload is block or transaction content, exempt from BSV's ordinary
/// limit: blocks, transactions, and a compact block and the missing transactions of one,
/// which the SV node also counts as block messages (its `IsBlockLike`). A `cmpctblock` or
/// `blocktxn` above the ordinary limit is read only while we wait for a block from the
/// peer (see the frame decoder), so no peer makes us buffer one unasked.
pub fn is_bulk_command(command: &str) -> bool {
    matches!(command, "block" | "tx" | "cmpctblock" | "blocktxn")
}

/// Everything meshd needs to know about one network.
#[derive(Debug, Clone)]
pub struct Profile {
    /// Which network this is.
    pub id: NetworkId,
    /// BTC or BSV.
    pub chain: Chain,
    /// Wire magic, as the four bytes on the wire.
    pub magic: Magic,
    /// Default P2P port.
    pub default_port: u16,
    /// Default admin API port (on loopback).
    pub api_port: u16,
    /// Default metrics port (on loopback): one per network, so nodes of different
    /// networks run side by side on their defaults.
    pub metrics_port: u16,
    /// The genesis block header.
    pub genesis: Header,
    /// DNS seed host names (empty for regtest).
    pub dns_seeds: &'static [&'static str],
    /// Public STUN servers used by default (none for regtest).
    pub stun_servers: &'static [&'static str],
    /// Protocol version we announce.
    pub protocol_version: u32,
    /// Payload limits.
    pub limits: PayloadLimits,
    /// Difficulty rule of the header chain.
    pub difficulty: DifficultyRule,
    /// Services we announce by default (see README: regtest announces NETWORK so local
    /// meshes and other implementations' outbound checks accept us).
    pub default_services: ServiceFlags,
    /// Services an automatic outbound peer must announce (manual peers are exempt, as Core).
    pub default_required_services: ServiceFlags,
}

/// meshd's admin API port per network: clear of Bitcoin Core's and the BSV node's P2P and RPC
/// ports, so meshd can run beside them.
fn api_port(id: NetworkId) -> u16 {
    match id {
        NetworkId::Mainnet => 8340,
        NetworkId::Testnet3 => 18340,
        NetworkId::Testnet4 => 48340,
        NetworkId::Signet => 38340,
        NetworkId::Regtest => 18450,
        NetworkId::BsvMainnet => 8341,
        NetworkId::BsvTestnet => 18341,
        NetworkId::BsvStn => 9341,
        NetworkId::BsvRegtest => 18451,
    }
}

/// meshd's metrics port per network: mainnet's is the 9184 meshd always had; the others
/// follow the API ports' pattern, clear of Core's and the SV node's ports.
fn metrics_port(id: NetworkId) -> u16 {
    match id {
        NetworkId::Mainnet => 9184,
        NetworkId::Testnet3 => 19184,
        NetworkId::Testnet4 => 49184,
        NetworkId::Signet => 39184,
        NetworkId::Regtest => 18452,
        NetworkId::BsvMainnet => 9185,
        NetworkId::BsvTestnet => 19185,
        NetworkId::BsvStn => 9186,
        NetworkId::BsvRegtest => 18453,
    }
}

/// The user agent meshd announces, BIP14 style.
pub fn user_agent() -> String {
    format!("/meshd:{}/", env!("CARGO_PKG_VERSION"))
}

/// Public STUN servers for the public networks (well-known, free, anycast).
const PUBLIC_STUN_SERVERS: &[&str] = &["stun.l.google.com:19302", "stun.cloudflare.com:3478"];

const BTC_MAINNET_SEEDS: &[&str] = &[
    "seed.bitcoin.sipa.be",
    "dnsseed.bluematt.me",
    "seed.bitcoin.jonasschnelli.ch",
    "seed.btc.petertodd.net",
    "seed.bitcoin.sprovoost.nl",
    "dnsseed.emzy.de",
    "seed.bitcoin.wiz.biz",
    "seed.mainnet.achownodes.xyz",
];
const BTC_TESTNET3_SEEDS: &[&str] = &[
    "testnet-seed.bitcoin.jonasschnelli.ch",
    "seed.tbtc.petertodd.net",
    "seed.testnet.bitcoin.sprovoost.nl",
    "testnet-seed.bluematt.me",
    "seed.testnet.achownodes.xyz",
];
const BTC_TESTNET4_SEEDS: &[&str] = &[
    "seed.testnet4.bitcoin.sprovoost.nl",
    "seed.testnet4.wiz.biz",
];
const BTC_SIGNET_SEEDS: &[&str] = &[
    "seed.signet.bitcoin.sprovoost.nl",
    "seed.signet.achownodes.xyz",
];
const BSV_MAINNET_SEEDS: &[&str] = &[
    "seed.bitcoinsv.io",
    "seed.satoshisvision.network",
    "seed.bitcoinseed.directory",
];
const BSV_TESTNET_SEEDS: &[&str] = &["testnet-seed.bitcoinsv.io", "testnet-seed.bitcoincloud.net"];
const BSV_STN_SEEDS: &[&str] = &["stn-seed.bitcoinsv.io"];

impl Profile {
    /// The minimum cumulative work a header chain must show before its headers are stored
    /// (Bitcoin Core 30's `nMinimumChainWork`; zero on regtest and on BSV networks, whose
    /// node meshd has no verified figure from). Below it, headers go through presync.
    pub fn min_chain_work(&self) -> u128 {
        match self.id {
            NetworkId::Mainnet => 0x1128750f82f4c366153a3a030,
            NetworkId::Testnet3 => 0xf209695166be8b61fa9,
            NetworkId::Testnet4 => 0x34a4690fe592dc49c7c,
            NetworkId::Signet => 0x67d328e681a,
            NetworkId::Regtest
            | NetworkId::BsvMainnet
            | NetworkId::BsvTestnet
            | NetworkId::BsvStn
            | NetworkId::BsvRegtest => 0,
        }
    }

    /// The profile of `id`.
    pub fn of(id: NetworkId) -> Profile {
        let btc_limits = PayloadLimits {
            general: BTC_MAX_PAYLOAD,
            bulk: BTC_MAX_PAYLOAD,
            send_default: BTC_MAX_PAYLOAD,
            relayed_tx: BTC_MAX_RELAYED_TX,
            bulk_is_policy: false,
        };
        let bsv_limits = PayloadLimits {
            general: BSV_DEFAULT_RECV_PAYLOAD,
            bulk: BSV_DEFAULT_MAX_BLOCK_MESSAGE,
            send_default: BSV_LEGACY_PAYLOAD,
            relayed_tx: BSV_MAX_RELAYED_TX,
            bulk_is_policy: true,
        };
        let btc = |network: Network, seeds, port, difficulty| Profile {
            id,
            chain: Chain::Btc,
            magic: Magic::from(network),
            default_port: port,
            api_port: api_port(id),
            metrics_port: metrics_port(id),
            genesis: bitcoin::constants::genesis_block(network).header,
            dns_seeds: seeds,
            stun_servers: PUBLIC_STUN_SERVERS,
            protocol_version: BTC_PROTOCOL_VERSION,
            limits: btc_limits,
            difficulty,
            default_services: ServiceFlags::NONE,
            default_required_services: ServiceFlags::NETWORK,
        };
        // BSV kept Bitcoin's genesis blocks: mainnet's, testnet3's (testnet and STN) and
        // regtest's. Only the magic differs.
        let bsv = |genesis_of: Network, magic: [u8; 4], seeds, port, difficulty| Profile {
            id,
            chain: Chain::Bsv,
            magic: Magic::from_bytes(magic),
            default_port: port,
            api_port: api_port(id),
            metrics_port: metrics_port(id),
            genesis: bitcoin::constants::genesis_block(genesis_of).header,
            dns_seeds: seeds,
            stun_servers: PUBLIC_STUN_SERVERS,
            protocol_version: BSV_PROTOCOL_VERSION,
            limits: bsv_limits,
            difficulty,
            default_services: ServiceFlags::NONE,
            default_required_services: ServiceFlags::NETWORK,
        };
        let regtest_services = |mut p: Profile| {
            // Regtest is local: no public STUN server to ask.
            p.stun_servers = &[];
            // On regtest meshd announces NETWORK (and WITNESS on BTC): local test meshes, and
            // implementations such as bcoin that insist on them for outbound peers, then
            // accept meshd. On public networks we announce nothing we do not serve.
            p.default_services = match p.chain {
                Chain::Btc => ServiceFlags::NETWORK | ServiceFlags::WITNESS,
                Chain::Bsv => ServiceFlags::NETWORK,
            };
            p
        };
        match id {
            NetworkId::Mainnet => btc(
                Network::Bitcoin,
                BTC_MAINNET_SEEDS,
                8333,
                DifficultyRule::BtcMainnet,
            ),
            NetworkId::Testnet3 => btc(
                Network::Testnet,
                BTC_TESTNET3_SEEDS,
                18333,
                DifficultyRule::BtcTestnet3,
            ),
            NetworkId::Testnet4 => btc(
                Network::Testnet4,
                BTC_TESTNET4_SEEDS,
                48333,
                DifficultyRule::BtcTestnet4,
            ),
            NetworkId::Signet => btc(
                Network::Signet,
                BTC_SIGNET_SEEDS,
                38333,
                DifficultyRule::BtcSignet,
            ),
            NetworkId::Regtest => {
                regtest_services(btc(Network::Regtest, &[], 18444, DifficultyRule::Regtest))
            }
            NetworkId::BsvMainnet => bsv(
                Network::Bitcoin,
                [0xe3, 0xe1, 0xf3, 0xe8],
                BSV_MAINNET_SEEDS,
                8333,
                DifficultyRule::BsvDaa,
            ),
            NetworkId::BsvTestnet => bsv(
                Network::Testnet,
                [0xf4, 0xe5, 0xf3, 0xf4],
                BSV_TESTNET_SEEDS,
                18333,
                DifficultyRule::BsvDaa,
            ),
            NetworkId::BsvStn => bsv(
                Network::Testnet,
                [0xfb, 0xce, 0xc4, 0xf9],
                BSV_STN_SEEDS,
                9333,
                DifficultyRule::BsvDaa,
            ),
            NetworkId::BsvRegtest => regtest_services(bsv(
                Network::Regtest,
                [0xda, 0xb5, 0xbf, 0xfa],
                &[],
                18444,
                DifficultyRule::Regtest,
            )),
        }
    }

    /// True for the regtest networks, where local and private addresses are normal.
    pub fn is_regtest(&self) -> bool {
        self.difficulty == DifficultyRule::Regtest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn genesis_hash(id: NetworkId) -> String {
        id.profile().genesis.block_hash().to_string()
    }

    #[test]
    fn every_genesis_hash_is_the_networks_real_one() {
        let main = "000000000019d6689c085ae165831e934ff763ae46a2a6c172b3f1b60a8ce26f";
        let test3 = "000000000933ea01ad0ee984209779baaec3ced90fa3f408719526f8d77f4943";
        let regtest = "0f9188f13cb7b2c71f2a335e3a4fc328bf5beb436012afca590b1a11466e2206";
        assert_eq!(genesis_hash(NetworkId::Mainnet), main);
        assert_eq!(genesis_hash(NetworkId::Testnet3), test3);
        assert_eq!(
            genesis_hash(NetworkId::Testnet4),
            "00000000da84f2bafbbc53dee25a72ae507ff4914b867c565be350b0da8bf043"
        );
        assert_eq!(
            genesis_hash(NetworkId::Signet),
            "00000008819873e925422c1ff0f99f7cc9bbb232af63a077a480a3633bee1ef6"
        );
        assert_eq!(genesis_hash(NetworkId::Regtest), regtest);
        assert_eq!(genesis_hash(NetworkId::BsvMainnet), main);
        assert_eq!(genesis_hash(NetworkId::BsvTestnet), test3);
        assert_eq!(genesis_hash(NetworkId::BsvStn), test3);
        assert_eq!(genesis_hash(NetworkId::BsvRegtest), regtest);
    }

    #[test]
    fn every_magic_and_port_matches_the_reference_nodes() {
        let expect: [(NetworkId, [u8; 4], u16); 9] = [
            (NetworkId::Mainnet, [0xf9, 0xbe, 0xb4, 0xd9], 8333),
            (NetworkId::Testnet3, [0x0b, 0x11, 0x09, 0x07], 18333),
            (NetworkId::Testnet4, [0x1c, 0x16, 0x3f, 0x28], 48333),
            (NetworkId::Signet, [0x0a, 0x03, 0xcf, 0x40], 38333),
            (NetworkId::Regtest, [0xfa, 0xbf, 0xb5, 0xda], 18444),
            (NetworkId::BsvMainnet, [0xe3, 0xe1, 0xf3, 0xe8], 8333),
            (NetworkId::BsvTestnet, [0xf4, 0xe5, 0xf3, 0xf4], 18333),
            (NetworkId::BsvStn, [0xfb, 0xce, 0xc4, 0xf9], 9333),
            (NetworkId::BsvRegtest, [0xda, 0xb5, 0xbf, 0xfa], 18444),
        ];
        for (id, magic, port) in expect {
            let p = id.profile();
            assert_eq!(p.magic.to_bytes(), magic, "{id}");
            assert_eq!(p.default_port, port, "{id}");
        }
    }

    #[test]
    fn names_round_trip_and_unknown_names_are_refused() {
        for id in NetworkId::ALL {
            assert_eq!(id.name().parse::<NetworkId>().unwrap(), id);
        }
        assert!("moonnet".parse::<NetworkId>().is_err());
    }

    #[test]
    fn regtest_has_no_dns_seeds_and_public_networks_do() {
        for id in NetworkId::ALL {
            let p = id.profile();
            assert_eq!(p.dns_seeds.is_empty(), p.is_regtest(), "{id}");
        }
    }

    #[test]
    fn bsv_exempts_block_content_from_the_ordinary_limit() {
        let l = NetworkId::BsvMainnet.profile().limits;
        assert_eq!(l.for_command("inv"), BSV_DEFAULT_RECV_PAYLOAD);
        assert_eq!(l.for_command("block"), BSV_DEFAULT_MAX_BLOCK_MESSAGE);
        let b = NetworkId::Mainnet.profile().limits;
        assert_eq!(b.for_command("block"), BTC_MAX_PAYLOAD);
        assert!(user_agent().starts_with("/meshd:"));
    }
}
