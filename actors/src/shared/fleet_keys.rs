//! The fleet's trusted advisory keys (`--fleet-trusted-keys FILE`), as the configuration
//! holds them: each ed25519 public key bound to the one node name it signs for. Parsed here,
//! used by the Fleet actor (`crate::fleet`) to check ban advisories.

use std::collections::HashMap;

use ed25519_dalek::VerifyingKey;

/// Trusted keys one `--fleet-trusted-keys` file may list (a fleet, not a public network).
pub const MAX_TRUSTED_KEYS: usize = 4096;

/// Bytes as lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `N` bytes from exactly `2N` hex digits.
pub fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != 2 * N || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// The keys whose advisories a node applies (`--fleet-trusted-keys FILE`), each bound to
/// the one node name it signs for.
///
/// The file: one `PUBKEY NODE_NAME` per line (the key in hex, as `meshd fleet key` prints
/// it; the name is that node's `--node-name`), `#` comments and blank lines ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedKeys {
    by_key: HashMap<[u8; 32], String>,
}

impl TrustedKeys {
    /// Parses a trusted-keys file; errors name the line.
    pub fn parse(text: &str) -> Result<TrustedKeys, String> {
        let mut by_key = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let mut words = line.split_whitespace();
            let (Some(key), Some(name), None) = (words.next(), words.next(), words.next()) else {
                return Err(format!("line {}: expected PUBKEY NODE_NAME", n + 1));
            };
            let bytes = unhex::<32>(key)
                .filter(|b| VerifyingKey::from_bytes(b).is_ok())
                .ok_or_else(|| format!("line {}: not an ed25519 public key in hex", n + 1))?;
            if by_key.len() >= MAX_TRUSTED_KEYS {
                return Err(format!("more than {MAX_TRUSTED_KEYS} keys"));
            }
            by_key.insert(bytes, name.to_string());
        }
        Ok(TrustedKeys { by_key })
    }

    /// The node name `key` signs for, when trusted.
    pub fn name_of(&self, key: &[u8; 32]) -> Option<&str> {
        self.by_key.get(key).map(String::as_str)
    }

    /// Keys listed.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    /// Whether none is listed.
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }
}
