//! Who may call the JSON-RPC (Core's cookie and `--rpcauth` users) and its default port:
//! the part of [`crate::rpc`] that settings need, free of the server.

use bitcoin::hashes::{hmac, sha256, Hash, HashEngine};
use meshd_actors::network::NetworkId;

/// The cookie's user name, as Core's.
pub const COOKIE_USER: &str = "__cookie__";

/// The JSON-RPC's default port: Core's (and the SV node's) RPC port of the network, since
/// tools default to it. `--rpc` is off unless given, so a bitcoind beside meshd is not
/// disturbed unless the operator asks for the same port.
pub fn default_rpc_port(id: NetworkId) -> u16 {
    match id {
        NetworkId::Mainnet | NetworkId::BsvMainnet => 8332,
        NetworkId::Testnet3 | NetworkId::BsvTestnet => 18332,
        NetworkId::Testnet4 => 48332,
        NetworkId::Signet => 38332,
        NetworkId::Regtest => 18443,
        NetworkId::BsvStn => 9332,
        NetworkId::BsvRegtest => 18332,
    }
}

/// One `--rpcauth` user: Core's `USER:SALT$HASH`, HASH = hex HMAC-SHA256 keyed by SALT of
/// the password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpcAuthUser {
    /// User name.
    pub user: String,
    /// The salt, as given (its text is the HMAC key).
    pub salt: String,
    /// The HMAC, 32 bytes.
    pub hmac: [u8; 32],
}

impl RpcAuthUser {
    /// Parses `USER:SALT$HASH`.
    pub fn parse(text: &str) -> Result<RpcAuthUser, String> {
        let bad =
            || format!("rpcauth: expected USER:SALT$HASH (from Core's rpcauth.py), got {text:?}");
        let (user, rest) = text.split_once(':').ok_or_else(bad)?;
        let (salt, hash) = rest.split_once('$').ok_or_else(bad)?;
        if user.is_empty() || salt.is_empty() || hash.len() != 64 {
            return Err(bad());
        }
        let mut hmac = [0u8; 32];
        for (i, b) in hmac.iter_mut().enumerate() {
            *b = u8::from_str_radix(hash.get(2 * i..2 * i + 2).ok_or_else(bad)?, 16)
                .map_err(|_| bad())?;
        }
        Ok(RpcAuthUser {
            user: user.to_string(),
            salt: salt.to_string(),
            hmac,
        })
    }

    /// Whether `password` is this user's.
    pub fn accepts(&self, password: &str) -> bool {
        let mut engine = hmac::HmacEngine::<sha256::Hash>::new(self.salt.as_bytes());
        engine.input(password.as_bytes());
        let mac = hmac::Hmac::<sha256::Hash>::from_engine(engine);
        same_bytes(mac.as_byte_array(), &self.hmac)
    }
}

fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    // Constant time in the length: the comparison must not leak how much matched.
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Who may call: the cookie's password and the `--rpcauth` users.
#[derive(Debug, Clone)]
pub struct RpcAuth {
    /// The cookie's password (hex), when a cookie was written.
    pub cookie: Option<String>,
    /// `--rpcauth` users.
    pub users: Vec<RpcAuthUser>,
}

impl RpcAuth {
    /// Whether an `Authorization` header's value lets the caller in.
    pub fn check(&self, authorization: Option<&str>) -> bool {
        use base64::Engine;
        let Some(encoded) = authorization.and_then(|v| v.strip_prefix("Basic ")) else {
            return false;
        };
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim()) else {
            return false;
        };
        let Ok(text) = String::from_utf8(decoded) else {
            return false;
        };
        let Some((user, password)) = text.split_once(':') else {
            return false;
        };
        if user == COOKIE_USER {
            return self
                .cookie
                .as_ref()
                .is_some_and(|c| same_bytes(c.as_bytes(), password.as_bytes()));
        }
        self.users
            .iter()
            .any(|u| u.user == user && u.accepts(password))
    }
}
