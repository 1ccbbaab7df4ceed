//! Bitcoin Core's asmap (`-asmap`): a map from IP prefixes to the autonomous system that
//! announces them, in Core's encoded form (`src/util/asmap.cpp`), so that network groups are
//! by AS instead of by /16 or /32: one AS that holds many prefixes cannot fill the address
//! book's buckets, our outbound slots or the protected eviction share by spreading its
//! addresses over prefixes.
//!
//! The file is a bit stream (least significant bit of each byte first) of a small program
//! that walks the 128 bits of an IPv6 address (IPv4 as `::ffff:a.b.c.d`) from the most
//! significant: `RETURN asn`, `JUMP offset` (on a 1 bit, skip `offset` bits of program),
//! `MATCH bits` (the next input bits must equal these, else the default is the answer) and
//! `DEFAULT asn`. Integers are Core's variable-length code: a run of "more" flags picks one
//! of several mantissa widths. A file is checked as Core's `SanityCheckASMap` checks it
//! before it is used, so a lookup never reads past its end on any input. Sans-IO.

use std::net::IpAddr;

use bitcoin::hashes::{sha256d, Hash};

use crate::shared::bans::canonical;

/// Largest asmap file read: Core's published maps are about 1.5 MB; an operator's file
/// above this is refused rather than held in memory.
pub const MAX_ASMAP_BYTES: usize = 16 << 20;

/// The input bits a program walks: an IPv6 address.
const IP_BITS: u32 = 128;

/// Core's sentinel for a value that runs past the end of the program.
const INVALID: u32 = u32::MAX;

/// Mantissa widths of an instruction's type (RETURN 0, JUMP 1, MATCH 2, DEFAULT 3).
const TYPE_BIT_SIZES: &[u8] = &[0, 0, 1];
/// Mantissa widths of an AS number (values from 1).
const ASN_BIT_SIZES: &[u8] = &[15, 16, 17, 18, 19, 20, 21, 22, 23, 24];
/// Mantissa widths of a MATCH argument (values from 2: a leading 1 and up to 8 bits).
const MATCH_BIT_SIZES: &[u8] = &[1, 2, 3, 4, 5, 6, 7, 8];
/// Mantissa widths of a JUMP offset (values from 17).
const JUMP_BIT_SIZES: &[u8] = &[
    5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29,
    30,
];

/// An instruction of the program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Return,
    Jump,
    Match,
    Default,
}

/// Why an asmap file was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AsmapError {
    /// Empty, or over [`MAX_ASMAP_BYTES`].
    #[error("asmap file of {0} bytes (expected 1 to {MAX_ASMAP_BYTES})")]
    Size(usize),
    /// It fails Core's sanity check: some input could run off its end, jump into an
    /// instruction, or the file carries padding or code nothing reaches.
    #[error("not a valid asmap (fails Core's sanity check)")]
    Invalid,
}

/// A checked asmap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Asmap {
    bytes: Vec<u8>,
    /// Core's asmap "version" (`AsmapVersion`): the double SHA-256 of the file, in Core's
    /// byte order (as a uint256 prints), shown and logged so operators can tell which map a
    /// node uses, and compare it with Core's "Using asmap version" line.
    version: String,
}

/// A read position in the program's bit stream.
struct Bits<'a> {
    bytes: &'a [u8],
    pos: usize,
    end: usize,
}

impl Bits<'_> {
    fn next(&mut self) -> Option<bool> {
        if self.pos >= self.end {
            return None;
        }
        let bit = (self.bytes[self.pos / 8] >> (self.pos % 8)) & 1 == 1;
        self.pos += 1;
        Some(bit)
    }

    fn left(&self) -> usize {
        self.end - self.pos
    }

    /// Core's `DecodeBits`: for each width but the last a flag says "more" (add 2^width and
    /// go on) or "this one" (read `width` bits, most significant first); the last width has
    /// no flag.
    fn decode(&mut self, minval: u32, sizes: &[u8]) -> u32 {
        let mut val = u64::from(minval);
        for (i, &size) in sizes.iter().enumerate() {
            let more = if i + 1 != sizes.len() {
                match self.next() {
                    Some(b) => b,
                    None => return INVALID,
                }
            } else {
                false
            };
            if more {
                val += 1u64 << size;
            } else {
                for b in 0..size {
                    match self.next() {
                        Some(bit) => val += u64::from(bit) << (size - 1 - b),
                        None => return INVALID,
                    }
                }
                return u32::try_from(val).unwrap_or(INVALID);
            }
        }
        INVALID
    }

    fn op(&mut self) -> Option<Op> {
        match self.decode(0, TYPE_BIT_SIZES) {
            0 => Some(Op::Return),
            1 => Some(Op::Jump),
            2 => Some(Op::Match),
            3 => Some(Op::Default),
            _ => None,
        }
    }
}

/// The number of bits of `v` after its leading 1 (Core's `std::bit_width(match) - 1`).
fn match_len(v: u32) -> u32 {
    (32 - v.leading_zeros()).saturating_sub(1)
}

/// The 128 input bits of `ip`, as Core's `GetMappedAS` forms them: an address that carries
/// an IPv4 one (IPv4 itself, IPv4-mapped, RFC 6145 `::ffff:0:a.b.c.d`, RFC 6052 NAT64
/// `64:ff9b::/96`, RFC 3964 6to4 `2002::/16`, RFC 4380 Teredo `2001::/32` with its address
/// inverted) is looked up as that IPv4 address, `::ffff:a.b.c.d`; any other IPv6 as itself.
fn ip_bits(ip: IpAddr) -> u128 {
    let v4 = |v: std::net::Ipv4Addr| u128::from(v.to_ipv6_mapped());
    match canonical(ip) {
        IpAddr::V4(a) => v4(a),
        IpAddr::V6(v6) => {
            let s = v6.segments();
            let o = v6.octets();
            let tail = std::net::Ipv4Addr::new(o[12], o[13], o[14], o[15]);
            let rfc6145 = s[..4] == [0, 0, 0, 0] && s[4] == 0xffff && s[5] == 0;
            let nat64 = s[..6] == [0x64, 0xff9b, 0, 0, 0, 0];
            if rfc6145 || nat64 {
                v4(tail)
            } else if s[0] == 0x2002 {
                v4(std::net::Ipv4Addr::new(o[2], o[3], o[4], o[5]))
            } else if s[0] == 0x2001 && s[1] == 0 {
                v4(std::net::Ipv4Addr::new(!o[12], !o[13], !o[14], !o[15]))
            } else {
                u128::from(v6)
            }
        }
    }
}

impl Asmap {
    /// Reads and checks an encoded asmap.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Asmap, AsmapError> {
        if bytes.is_empty() || bytes.len() > MAX_ASMAP_BYTES {
            return Err(AsmapError::Size(bytes.len()));
        }
        if !sanity_check(&bytes, IP_BITS) {
            return Err(AsmapError::Invalid);
        }
        let version = sha256d::Hash::hash(&bytes).to_string();
        Ok(Asmap { bytes, version })
    }

    /// Reads and checks the asmap file at `path`.
    pub fn load(path: &std::path::Path) -> Result<Asmap, String> {
        let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
        if meta.len() > MAX_ASMAP_BYTES as u64 {
            return Err(format!(
                "{}: {}",
                path.display(),
                AsmapError::Size(meta.len() as usize)
            ));
        }
        let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Asmap::from_bytes(bytes).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Core's asmap version: the file's double SHA-256, hex, as Core prints it.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The AS that announces `ip` (Core's `GetMappedAS`), if the map names one. Only IPv4
    /// and IPv6 addresses are mapped; the internal addresses of onion, I2P and CJDNS peers
    /// are not (the caller leaves them out).
    pub fn lookup(&self, ip: IpAddr) -> Option<u32> {
        match interpret(&self.bytes, ip_bits(ip)) {
            0 => None,
            asn => Some(asn),
        }
    }
}

/// Core's `Interpret`. Only called on a program that passed [`sanity_check`]; any path that
/// would run off it answers 0 (no AS), never panics.
fn interpret(program: &[u8], ip: u128) -> u32 {
    let mut bits = Bits {
        bytes: program,
        pos: 0,
        end: program.len() * 8,
    };
    // Input bits left; the next one is bit (left - 1) of `ip`.
    let mut left = IP_BITS;
    let mut default_asn = 0;
    while bits.left() > 0 {
        match bits.op() {
            Some(Op::Return) => {
                let asn = bits.decode(1, ASN_BIT_SIZES);
                return if asn == INVALID { 0 } else { asn };
            }
            Some(Op::Jump) => {
                let jump = bits.decode(17, JUMP_BIT_SIZES);
                if jump == INVALID || left == 0 || jump as usize >= bits.left() {
                    return 0;
                }
                if (ip >> (left - 1)) & 1 == 1 {
                    bits.pos += jump as usize;
                }
                left -= 1;
            }
            Some(Op::Match) => {
                let m = bits.decode(2, MATCH_BIT_SIZES);
                if m == INVALID {
                    return 0;
                }
                let len = match_len(m);
                if left < len {
                    return 0;
                }
                for i in 0..len {
                    let want = (m >> (len - 1 - i)) & 1 == 1;
                    let got = (ip >> (left - 1)) & 1 == 1;
                    if want != got {
                        return default_asn;
                    }
                    left -= 1;
                }
            }
            Some(Op::Default) => {
                let asn = bits.decode(1, ASN_BIT_SIZES);
                if asn == INVALID {
                    return 0;
                }
                default_asn = asn;
            }
            None => return 0,
        }
    }
    0
}

/// Core's `SanityCheckASMap`: every path through the program is well formed for `bits` of
/// input: no value runs past the end, jumps land on instructions and do not cross, no input
/// is consumed past its end, at most one short MATCH in a run, no DEFAULT twice or before a
/// RETURN, no unreachable code, and at most 7 zero bits of padding after the last RETURN.
fn sanity_check(program: &[u8], mut bits: u32) -> bool {
    let mut r = Bits {
        bytes: program,
        pos: 0,
        end: program.len() * 8,
    };
    // Where pending jumps land, innermost last, with the input bits left there.
    let mut jumps: Vec<(usize, u32)> = Vec::new();
    let mut prev = Op::Jump;
    let mut had_incomplete_match = false;
    while r.left() > 0 {
        let offset = r.pos;
        if jumps.last().is_some_and(|&(to, _)| offset >= to) {
            return false;
        }
        let Some(op) = r.op() else {
            return false;
        };
        match op {
            Op::Return => {
                if prev == Op::Default {
                    return false;
                }
                if r.decode(1, ASN_BIT_SIZES) == INVALID {
                    return false;
                }
                match jumps.pop() {
                    None => {
                        if r.left() > 7 {
                            return false;
                        }
                        while let Some(bit) = r.next() {
                            if bit {
                                return false;
                            }
                        }
                        return true;
                    }
                    Some((to, left)) => {
                        if r.pos != to {
                            return false;
                        }
                        bits = left;
                        prev = Op::Jump;
                    }
                }
            }
            Op::Jump => {
                let jump = r.decode(17, JUMP_BIT_SIZES);
                if jump == INVALID || jump as usize > r.left() || bits == 0 {
                    return false;
                }
                bits -= 1;
                let to = r.pos + jump as usize;
                if jumps.last().is_some_and(|&(last, _)| to >= last) {
                    return false;
                }
                jumps.push((to, bits));
                prev = Op::Jump;
            }
            Op::Match => {
                let m = r.decode(2, MATCH_BIT_SIZES);
                if m == INVALID {
                    return false;
                }
                let len = match_len(m);
                if prev != Op::Match {
                    had_incomplete_match = false;
                }
                if len < 8 && had_incomplete_match {
                    return false;
                }
                had_incomplete_match = len < 8;
                if bits < len {
                    return false;
                }
                bits -= len;
                prev = Op::Match;
            }
            Op::Default => {
                if prev == Op::Default {
                    return false;
                }
                if r.decode(1, ASN_BIT_SIZES) == INVALID {
                    return false;
                }
                prev = Op::Default;
            }
        }
    }
    false
}

/// Writes asmap programs: an encoder for tests and tooling, the inverse of the decoder above
/// (Core's `test_framework/asmap.py` plays this part in its tests). A prefix trie becomes:
/// a leaf `RETURN asn`; a node with its own AS and longer prefixes below `DEFAULT asn` first
/// (what a mismatch below answers); a run of single-child nodes one `MATCH` per 8 bits; a
/// node with both children `JUMP` over the 0 side's program to the 1 side's.
pub mod encode {
    use std::net::IpAddr;

    use super::{ip_bits, ASN_BIT_SIZES, JUMP_BIT_SIZES, MATCH_BIT_SIZES, TYPE_BIT_SIZES};

    #[derive(Debug, Default)]
    struct Node {
        asn: Option<u32>,
        children: [Option<Box<Node>>; 2],
    }

    fn bits_of(minval: u32, sizes: &[u8], val: u32, out: &mut Vec<bool>) {
        let mut val = u64::from(val.saturating_sub(minval));
        for (i, &size) in sizes.iter().enumerate() {
            if i + 1 < sizes.len() && val >= 1u64 << size {
                val -= 1u64 << size;
                out.push(true);
                continue;
            }
            if i + 1 < sizes.len() {
                out.push(false);
            }
            for b in 0..size {
                out.push((val >> (size - 1 - b)) & 1 == 1);
            }
            return;
        }
    }

    fn emit(node: &Node, out: &mut Vec<bool>) {
        let [zero, one] = &node.children;
        if zero.is_none() && one.is_none() {
            bits_of(0, TYPE_BIT_SIZES, 0, out);
            bits_of(1, ASN_BIT_SIZES, node.asn.unwrap_or(1), out);
            return;
        }
        if let Some(asn) = node.asn {
            bits_of(0, TYPE_BIT_SIZES, 3, out);
            bits_of(1, ASN_BIT_SIZES, asn, out);
        }
        // The run of single-child nodes from here, up to one with its own AS or two children.
        let mut chain = Vec::new();
        let mut n = node;
        loop {
            let next = match &n.children {
                [Some(c), None] => (false, c),
                [None, Some(c)] => (true, c),
                _ => break,
            };
            chain.push(next.0);
            n = next.1;
            if n.asn.is_some() {
                break;
            }
        }
        if !chain.is_empty() {
            for chunk in chain.chunks(8) {
                let m = chunk.iter().fold(1u32, |m, &bit| (m << 1) | u32::from(bit));
                bits_of(0, TYPE_BIT_SIZES, 2, out);
                bits_of(2, MATCH_BIT_SIZES, m, out);
            }
            emit(n, out);
            return;
        }
        let (mut left, mut right) = (Vec::new(), Vec::new());
        if let [Some(z), Some(o)] = &node.children {
            emit(z, &mut left);
            emit(o, &mut right);
        }
        bits_of(0, TYPE_BIT_SIZES, 1, out);
        bits_of(17, JUMP_BIT_SIZES, left.len() as u32, out);
        out.extend(left);
        out.extend(right);
    }

    /// Encodes `prefixes` (network, prefix length, AS >= 1) into an asmap file: an address
    /// maps to the AS of the longest prefix that holds it, or to none. IPv4 prefixes are of
    /// `::ffff:0:0/96`, as Core maps them. At least one prefix.
    pub fn prefixes(prefixes: &[(IpAddr, u8, u32)]) -> Vec<u8> {
        let mut root = Node::default();
        for &(ip, len, asn) in prefixes {
            let bits = ip_bits(ip);
            let len = match ip {
                IpAddr::V4(_) => 96 + u32::from(len.min(32)),
                IpAddr::V6(_) => u32::from(len.min(128)),
            };
            let mut node = &mut root;
            for i in 0..len {
                let bit = ((bits >> (127 - i)) & 1) as usize;
                node = node.children[bit].get_or_insert_with(Box::default);
            }
            node.asn = Some(asn.max(1));
        }
        let mut out = Vec::new();
        emit(&root, &mut out);
        let mut bytes = vec![0u8; out.len().div_ceil(8)];
        for (i, bit) in out.iter().enumerate() {
            if *bit {
                bytes[i / 8] |= 1 << (i % 8);
            }
        }
        bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_variable_length_code_is_cores() {
        // RETURN 1: type 0 as "0", AS 1 as "0" then 15 zero bits: 17 bits, all zero.
        let map = Asmap::from_bytes(vec![0, 0, 0]).unwrap();
        assert_eq!(map.lookup(ip("203.0.113.5")), Some(1));
        assert_eq!(map.lookup(ip("2001:db8::1")), Some(1));
        // The same with a stray bit in the padding, or 8 bits of padding: refused.
        assert_eq!(
            Asmap::from_bytes(vec![0, 0, 0x80]),
            Err(AsmapError::Invalid)
        );
        assert_eq!(
            Asmap::from_bytes(vec![0, 0, 0, 0]),
            Err(AsmapError::Invalid)
        );
        assert_eq!(Asmap::from_bytes(vec![]), Err(AsmapError::Size(0)));
    }

    #[test]
    fn a_program_written_out_by_hand_from_cores_format_decodes() {
        // MATCH one bit, 0 ("110", value 2: flag 0 then mantissa 0), RETURN ("0") AS 5 (flag
        // 0, then 4 in 15 bits): 22 bits, least significant first in each byte, 2 zero bits
        // of padding. Every IPv4 address (::ffff:..., first bit 0) is in AS 5; an IPv6
        // address whose first bit is 1 fails the MATCH and has none.
        let bytes = vec![0x03, 0x00, 0x08];
        let map = Asmap::from_bytes(bytes.clone()).unwrap();
        assert_eq!(map.lookup(ip("203.0.113.9")), Some(5));
        assert_eq!(map.lookup(ip("2001:db8::1")), Some(5));
        assert_eq!(map.lookup(ip("8000::1")), None);
        // The encoder writes the same program for ::/1.
        assert_eq!(encode::prefixes(&[(ip("::"), 1, 5)]), bytes);
        // Read most significant bit first, the same bytes are another program entirely.
        let reversed: Vec<u8> = bytes.iter().map(|b| b.reverse_bits()).collect();
        assert_ne!(
            Asmap::from_bytes(reversed)
                .ok()
                .and_then(|m| m.lookup(ip("203.0.113.9"))),
            Some(5)
        );
    }

    #[test]
    fn addresses_that_carry_an_ipv4_one_map_as_it_does() {
        let map = Asmap::from_bytes(encode::prefixes(&[(ip("203.0.113.0"), 24, 64500)])).unwrap();
        for carrier in [
            "::ffff:203.0.113.9",
            "64:ff9b::cb00:7109",
            "2002:cb00:7109::1",
            // Teredo: the client's address inverted in the last 32 bits.
            "2001:0:4136:e378:8000:63bf:34ff:8ef6",
        ] {
            assert_eq!(map.lookup(ip(carrier)), Some(64500), "{carrier}");
        }
        assert_eq!(map.lookup(ip("2003:cb00:7109::1")), None);
    }

    #[test]
    fn longest_prefix_wins_and_unmapped_addresses_have_no_as() {
        let map = Asmap::from_bytes(encode::prefixes(&[
            (ip("203.0.113.0"), 24, 64500),
            (ip("203.0.0.0"), 16, 64501),
            (ip("198.51.100.0"), 24, 64502),
            (ip("2001:db8::"), 32, 64503),
        ]))
        .unwrap();
        assert_eq!(map.lookup(ip("203.0.113.9")), Some(64500));
        assert_eq!(map.lookup(ip("203.0.7.1")), Some(64501));
        assert_eq!(map.lookup(ip("198.51.100.200")), Some(64502));
        assert_eq!(map.lookup(ip("::ffff:198.51.100.200")), Some(64502));
        assert_eq!(map.lookup(ip("198.51.101.1")), None);
        assert_eq!(map.lookup(ip("2001:db8:1::7")), Some(64503));
        assert_eq!(map.lookup(ip("2001:db9::7")), None);
        assert_eq!(map.lookup(ip("8.8.8.8")), None);
        assert_eq!(map.version().len(), 64);
    }

    proptest! {
        /// Any set of prefixes encodes into a file Core's checks accept, whose lookups agree
        /// with a longest-prefix match computed directly.
        #[test]
        fn encoded_maps_pass_the_check_and_answer_the_longest_prefix(
            nets in proptest::collection::vec((any::<u32>(), 0u8..=32, 1u32..5_000_000), 1..40),
            probes in proptest::collection::vec(any::<u32>(), 1..100),
        ) {
            let prefixes: Vec<(IpAddr, u8, u32)> = nets
                .iter()
                .map(|&(a, len, asn)| {
                    let masked = if len == 0 { 0 } else { a & (u32::MAX << (32 - len)) };
                    (IpAddr::V4(std::net::Ipv4Addr::from(masked)), len, asn)
                })
                .collect();
            let map = Asmap::from_bytes(encode::prefixes(&prefixes)).unwrap();
            for p in probes.iter().copied().chain(nets.iter().map(|n| n.0)) {
                // Longest prefix; among equal ones the last given (the encoder overwrites).
                let want = prefixes
                    .iter()
                    .enumerate()
                    .filter(|(_, (net, len, _))| {
                        let IpAddr::V4(n) = net else { return false };
                        *len == 0 || (p ^ u32::from(*n)) >> (32 - len) == 0
                    })
                    .max_by_key(|(i, (_, len, _))| (*len, *i))
                    .map(|(_, (_, _, asn))| *asn);
                prop_assert_eq!(map.lookup(IpAddr::V4(p.into())), want, "{}", std::net::Ipv4Addr::from(p));
            }
        }

        /// Any bytes: refused, or checked and then answered without a panic for any input.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 1..64), probe in any::<u128>()) {
            if let Ok(map) = Asmap::from_bytes(bytes) {
                let _ = map.lookup(IpAddr::V6(probe.into()));
            }
        }
    }
}
