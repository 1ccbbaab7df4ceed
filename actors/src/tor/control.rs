//! Tor's control protocol (`control-spec.txt`) as far as an onion service needs it, as a
//! sans-IO core: replies are parsed from bytes, commands are built as bytes, and the
//! SAFECOOKIE exchange is computed here. The [`super::TorControl`] actor owns the socket.
//!
//! A session is: `PROTOCOLINFO 1` (which authentication methods, where the cookie is);
//! `AUTHENTICATE` with SAFECOOKIE when offered (HMAC proof in both directions: the server
//! shows it knows the cookie before ours is sent, and a fake port learns nothing of it), else
//! a password (when one is set and Tor takes one; the password itself proves nothing of the
//! server), and no authentication only when the operator allows it
//! (`--torcontrol-null-auth`); plain COOKIE never. Then `ADD_ONION` with our key, always:
//! a key made here ([`new_key`]) when none is saved, never Tor's `NEW:`, so the server never
//! chooses our onion identity; the service id it answers must be our key's. `DEL_ONION` at
//! shutdown. The control port is local and trusted more than a peer, but it is still a
//! socket: lines and replies are bounded.

use bitcoin::hashes::{hmac, sha256, Hash, HashEngine};

/// Longest reply line accepted: Tor's are far shorter (a private key is 88 base64 bytes).
pub const MAX_LINE_LEN: usize = 16 * 1024;
/// Most lines in one reply (PROTOCOLINFO has four).
pub const MAX_REPLY_LINES: usize = 256;
/// Size of Tor's authentication cookie.
pub const COOKIE_LEN: usize = 32;
/// Key of the server's SAFECOOKIE proof (control-spec 3.24).
const SERVER_HASH_KEY: &[u8] = b"Tor safe cookie authentication server-to-controller hash";
/// Key of our SAFECOOKIE proof.
const CLIENT_HASH_KEY: &[u8] = b"Tor safe cookie authentication controller-to-server hash";

/// A control-port failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    /// A line over [`MAX_LINE_LEN`], a reply over [`MAX_REPLY_LINES`], or not a reply line.
    #[error("malformed control reply: {0}")]
    Malformed(String),
    /// Tor answered with an error status.
    #[error("tor refused {command}: {status} {text}")]
    Refused {
        /// The command.
        command: &'static str,
        /// The status code.
        status: u16,
        /// Tor's text.
        text: String,
    },
    /// No authentication method we can use.
    #[error("no usable authentication method (Tor offers {0}); set --torpassword or make the cookie readable")]
    NoAuthMethod(String),
    /// The cookie file could not be read or has the wrong size.
    #[error("cookie file {path}: {why}")]
    Cookie {
        /// The file.
        path: String,
        /// What was wrong.
        why: String,
    },
    /// The server's SAFECOOKIE proof was wrong: this is not the Tor that wrote the cookie.
    #[error("the control port's SAFECOOKIE proof is wrong")]
    BadServerHash,
    /// The port offers only no authentication and the operator did not allow it.
    #[error(
        "the control port asks for no authentication; pass --torcontrol-null-auth to use it anyway"
    )]
    NullAuthNotAllowed,
    /// `ADD_ONION` answered with a service that is not our key's.
    #[error("ADD_ONION answer does not match the key: {0}")]
    WrongService(String),
    /// A reply lacked a field we need.
    #[error("{0} missing from the reply")]
    Missing(&'static str),
    /// The control connection failed.
    #[error("control connection: {0}")]
    Io(String),
}

impl ControlError {
    /// A short stable name, used as the `kind` metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            ControlError::Malformed(_) => "malformed",
            ControlError::Refused { .. } => "refused",
            ControlError::NoAuthMethod(_) => "no_auth_method",
            ControlError::Cookie { .. } => "cookie",
            ControlError::BadServerHash => "bad_server_hash",
            ControlError::NullAuthNotAllowed => "null_auth_not_allowed",
            ControlError::WrongService(_) => "wrong_service",
            ControlError::Missing(_) => "missing_field",
            ControlError::Io(_) => "io",
        }
    }
}

/// One complete reply: its status and its lines' text (without status and separator).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The status of the last line (250 is success).
    pub status: u16,
    /// Each line's text, in order; data blocks (`+` lines) are folded into their line.
    pub lines: Vec<String>,
}

impl Reply {
    /// Whether the status is 250.
    pub fn is_ok(&self) -> bool {
        self.status == 250
    }

    /// The value of `KEY=value` in any line (unquoted; quotes stripped).
    pub fn value(&self, key: &str) -> Option<String> {
        for line in &self.lines {
            for word in split_words(line) {
                if let Some(v) = word.strip_prefix(key).and_then(|r| r.strip_prefix('=')) {
                    return Some(unquote(v));
                }
            }
        }
        None
    }

    /// Turns an error status into [`ControlError::Refused`].
    pub fn ok_or_refused(self, command: &'static str) -> Result<Reply, ControlError> {
        if self.is_ok() {
            Ok(self)
        } else {
            Err(ControlError::Refused {
                command,
                status: self.status,
                text: self.lines.last().cloned().unwrap_or_default(),
            })
        }
    }
}

/// Splits a line on spaces outside quotes.
fn split_words(line: &str) -> Vec<&str> {
    let mut words = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in line.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ' ' if !quoted => {
                if i > start {
                    words.push(&line[start..i]);
                }
                start = i + 1;
            }
            _ => {}
        }
    }
    if start < line.len() {
        words.push(&line[start..]);
    }
    words
}

/// Strips quotes and undoes `\"` and `\\` escapes.
fn unquote(v: &str) -> String {
    let Some(inner) = v.strip_prefix('"').and_then(|s| s.strip_suffix('"')) else {
        return v.to_string();
    };
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Quotes a string for a command argument.
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// Assembles replies from the bytes of the control connection.
#[derive(Debug, Default)]
pub struct ReplyReader {
    buf: Vec<u8>,
    lines: Vec<String>,
    /// Inside a `+` data block, which ends with a line holding one `.`.
    in_data: bool,
}

impl ReplyReader {
    /// A reader with nothing buffered.
    pub fn new() -> ReplyReader {
        ReplyReader::default()
    }

    /// Adds bytes read from the socket.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete reply, `Ok(None)` if more bytes are needed. Asynchronous events
    /// (status 650) are returned like any reply; the caller skips them.
    pub fn next_reply(&mut self) -> Result<Option<Reply>, ControlError> {
        loop {
            let Some(end) = self.buf.iter().position(|&b| b == b'\n') else {
                if self.buf.len() > MAX_LINE_LEN {
                    return Err(ControlError::Malformed("line too long".into()));
                }
                return Ok(None);
            };
            if end > MAX_LINE_LEN {
                return Err(ControlError::Malformed("line too long".into()));
            }
            let raw: Vec<u8> = self.buf.drain(..=end).collect();
            let line = String::from_utf8_lossy(&raw)
                .trim_end_matches(['\r', '\n'])
                .to_string();
            if self.in_data {
                if line == "." {
                    self.in_data = false;
                } else if let Some(last) = self.lines.last_mut() {
                    if last.len() + line.len() > MAX_LINE_LEN {
                        return Err(ControlError::Malformed("data block too long".into()));
                    }
                    last.push('\n');
                    last.push_str(line.strip_prefix('.').unwrap_or(&line));
                }
                continue;
            }
            if self.lines.len() >= MAX_REPLY_LINES {
                return Err(ControlError::Malformed("reply too long".into()));
            }
            let bytes = line.as_bytes();
            if bytes.len() < 4 || !bytes[..3].iter().all(u8::is_ascii_digit) {
                return Err(ControlError::Malformed(format!(
                    "not a reply line: {:?}",
                    line.chars().take(64).collect::<String>()
                )));
            }
            let separator = bytes[3];
            if !matches!(separator, b'-' | b'+' | b' ') {
                return Err(ControlError::Malformed("bad separator".into()));
            }
            // Bytes 0..4 are ASCII, so 4 is a character boundary.
            let status: u16 = line[..3].parse().unwrap_or(0);
            self.lines.push(line[4..].to_string());
            match separator {
                b'-' => {}
                b'+' => self.in_data = true,
                _ => {
                    return Ok(Some(Reply {
                        status,
                        lines: std::mem::take(&mut self.lines),
                    }))
                }
            }
        }
    }
}

/// How we authenticate, chosen from what PROTOCOLINFO offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthPlan {
    /// No authentication configured in Tor, and the operator allows using it.
    Null,
    /// HMAC challenge over the cookie in `path`; the password, if one is configured and Tor
    /// takes one, when the cookie cannot be read. Plain COOKIE is never used (nor by Core):
    /// it hands the cookie file's bytes to whatever listens on the port, which need not be
    /// Tor and need not know them; SAFECOOKIE checks the server's proof first.
    SafeCookie(String, Option<String>),
    /// The configured password.
    Password(String),
}

/// Picks the authentication from a PROTOCOLINFO reply, our password if any, and whether the
/// operator allows none (`allow_null`): SAFECOOKIE first (the only method where the server
/// proves anything), then the password, then NULL if allowed.
pub fn choose_auth(
    protocolinfo: &Reply,
    password: Option<&str>,
    allow_null: bool,
) -> Result<AuthPlan, ControlError> {
    let methods = protocolinfo
        .value("METHODS")
        .ok_or(ControlError::Missing("METHODS"))?;
    let has = |m: &str| methods.split(',').any(|x| x == m);
    let password = password.filter(|_| has("HASHEDPASSWORD"));
    if let (Some(path), true) = (protocolinfo.value("COOKIEFILE"), has("SAFECOOKIE")) {
        return Ok(AuthPlan::SafeCookie(path, password.map(str::to_string)));
    }
    if let Some(p) = password {
        return Ok(AuthPlan::Password(p.to_string()));
    }
    if has("NULL") {
        return if allow_null {
            Ok(AuthPlan::Null)
        } else {
            Err(ControlError::NullAuthNotAllowed)
        };
    }
    Err(ControlError::NoAuthMethod(methods))
}

/// Checks a cookie file's contents.
pub fn check_cookie(path: &str, bytes: &[u8]) -> Result<[u8; COOKIE_LEN], ControlError> {
    bytes.try_into().map_err(|_| ControlError::Cookie {
        path: path.to_string(),
        why: format!("{} bytes, expected {COOKIE_LEN}", bytes.len()),
    })
}

fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut engine = hmac::HmacEngine::<sha256::Hash>::new(key);
    for p in parts {
        engine.input(p);
    }
    hmac::Hmac::<sha256::Hash>::from_engine(engine).to_byte_array()
}

/// From an AUTHCHALLENGE reply: checks the server's proof and returns ours (hex).
pub fn safecookie_response(
    cookie: &[u8; COOKIE_LEN],
    client_nonce: &[u8; 32],
    challenge: &Reply,
) -> Result<String, ControlError> {
    let decode = |key: &'static str| {
        challenge
            .value(key)
            .and_then(|h| hex_decode(&h))
            .ok_or(ControlError::Missing(key))
    };
    let server_hash = decode("SERVERHASH")?;
    let server_nonce = decode("SERVERNONCE")?;
    let expected = hmac_sha256(SERVER_HASH_KEY, &[cookie, client_nonce, &server_nonce]);
    if server_hash != expected {
        return Err(ControlError::BadServerHash);
    }
    Ok(hex_encode(&hmac_sha256(
        CLIENT_HASH_KEY,
        &[cookie, client_nonce, &server_nonce],
    )))
}

/// Lower-case hex.
pub fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Hex to bytes; `None` if not hex.
pub fn hex_decode(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || s.len() > 2 * MAX_LINE_LEN {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// `ADD_ONION` for `key` (`ED25519-V3:<base64>`), mapping the onion's `virtual_port` to
/// `target`. `DiscardPK`: Tor sends no key back (it has ours).
pub fn add_onion_command(key: &str, virtual_port: u16, target: &str) -> String {
    format!("ADD_ONION {key} Flags=DiscardPK Port={virtual_port},{target}\r\n")
}

/// The service id (the onion name without `.onion`). Any key in the reply is ignored: the
/// key is always ours.
pub fn parse_add_onion(reply: &Reply) -> Result<String, ControlError> {
    let id = reply
        .value("ServiceID")
        .ok_or(ControlError::Missing("ServiceID"))?;
    if id.len() != 56 || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(ControlError::Malformed(format!("ServiceID {id:?}")));
    }
    Ok(id)
}

/// A new onion key, made here as Tor makes one (RFC 8032 key generation: SHA-512 of a random
/// seed, the scalar half clamped), in Tor's `ED25519-V3:` form.
pub fn new_key(seed: [u8; 32]) -> String {
    use bitcoin::hashes::sha512;
    let mut expanded = sha512::Hash::hash(&seed).to_byte_array();
    expanded[0] &= 248;
    expanded[31] &= 127;
    expanded[31] |= 64;
    format!("ED25519-V3:{}", data_encoding::BASE64.encode(&expanded))
}

/// Whether a saved key line is one `ADD_ONION` takes: `ED25519-V3:` and the base64 of a
/// 64-byte expanded secret key (Tor's and Core's format).
pub fn valid_key(key: &str) -> bool {
    key_service(key).is_some()
}

/// The onion service public key (what the service id encodes) of an `ED25519-V3:` key:
/// the expanded secret key's scalar times the base point. Only keys whose scalar half is
/// clamped, as every key Tor makes is: for them ed25519-dalek's (clamping) derivation and
/// Tor's (`ed25519_donna_pubkey`, which does not clamp) agree.
pub fn key_service(key: &str) -> Option<[u8; 32]> {
    let b64 = key.strip_prefix("ED25519-V3:")?;
    if b64.len() > 128 {
        return None;
    }
    let bytes = data_encoding::BASE64
        .decode(b64.as_bytes())
        .or_else(|_| data_encoding::BASE64_NOPAD.decode(b64.as_bytes()))
        .ok()?;
    let expanded: [u8; 64] = bytes.try_into().ok()?;
    let clamped = expanded[0] & 7 == 0 && expanded[31] & 0x80 == 0 && expanded[31] & 0x40 != 0;
    if !clamped {
        return None;
    }
    let secret = ed25519_dalek::hazmat::ExpandedSecretKey::from_bytes(&expanded);
    Some(ed25519_dalek::VerifyingKey::from(&secret).to_bytes())
}

/// Checks that the service `ADD_ONION` answered (`service`, the public key its ServiceID
/// encodes) is the one our key `sent` makes: a server that made another is not our Tor.
pub fn check_add_onion(sent: &str, service: &[u8; 32]) -> Result<(), ControlError> {
    if key_service(sent).as_ref() != Some(service) {
        return Err(ControlError::WrongService(
            "the service id is not our key's".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn read_all(bytes: &[u8]) -> Vec<Reply> {
        let mut r = ReplyReader::new();
        r.feed(bytes);
        let mut out = Vec::new();
        while let Some(reply) = r.next_reply().unwrap() {
            out.push(reply);
        }
        out
    }

    #[test]
    fn protocolinfo_is_parsed_and_safecookie_preferred() {
        let replies = read_all(
            b"250-PROTOCOLINFO 1\r\n250-AUTH METHODS=COOKIE,SAFECOOKIE COOKIEFILE=\"/var/lib/tor/control auth\\\"cookie\"\r\n250-VERSION Tor=\"0.4.9.11\"\r\n250 OK\r\n",
        );
        assert_eq!(replies.len(), 1);
        let r = &replies[0];
        assert!(r.is_ok());
        assert_eq!(
            choose_auth(r, None, false),
            Ok(AuthPlan::SafeCookie(
                "/var/lib/tor/control auth\"cookie".into(),
                None
            ))
        );
        // A password is used only where Tor takes one.
        assert_eq!(
            choose_auth(r, Some("pw"), false),
            Ok(AuthPlan::SafeCookie(
                "/var/lib/tor/control auth\"cookie".into(),
                None
            ))
        );
        let hashed = read_all(b"250-AUTH METHODS=HASHEDPASSWORD\r\n250 OK\r\n");
        assert_eq!(
            choose_auth(&hashed[0], Some("pw"), false),
            Ok(AuthPlan::Password("pw".into()))
        );
        assert!(matches!(
            choose_auth(&hashed[0], None, true),
            Err(ControlError::NoAuthMethod(_))
        ));
        // Plain COOKIE alone is refused: our cookie's bytes would go to whoever asks.
        let plain = read_all(b"250-AUTH METHODS=COOKIE COOKIEFILE=\"/etc/shadow\"\r\n250 OK\r\n");
        assert!(matches!(
            choose_auth(&plain[0], None, true),
            Err(ControlError::NoAuthMethod(_))
        ));
    }

    #[test]
    fn no_authentication_only_when_the_operator_allows_it() {
        let null = read_all(b"250-AUTH METHODS=NULL\r\n250 OK\r\n");
        assert_eq!(
            choose_auth(&null[0], None, false),
            Err(ControlError::NullAuthNotAllowed)
        );
        assert_eq!(
            choose_auth(&null[0], Some("pw"), false),
            Err(ControlError::NullAuthNotAllowed)
        );
        assert_eq!(choose_auth(&null[0], None, true), Ok(AuthPlan::Null));
        // Even when allowed, SAFECOOKIE (the server proves it is Tor) comes first, with the
        // password kept for a cookie that cannot be read.
        let both = read_all(
            b"250-AUTH METHODS=NULL,SAFECOOKIE,HASHEDPASSWORD COOKIEFILE=\"/c\"\r\n250 OK\r\n",
        );
        assert_eq!(
            choose_auth(&both[0], None, true),
            Ok(AuthPlan::SafeCookie("/c".into(), None))
        );
        assert_eq!(
            choose_auth(&both[0], Some("pw"), true),
            Ok(AuthPlan::SafeCookie("/c".into(), Some("pw".into())))
        );
        let password_or_null = read_all(b"250-AUTH METHODS=NULL,HASHEDPASSWORD\r\n250 OK\r\n");
        assert_eq!(
            choose_auth(&password_or_null[0], Some("pw"), true),
            Ok(AuthPlan::Password("pw".into()))
        );
    }

    /// The public key of a seed's key, as ed25519 signing keys derive it (RFC 8032).
    fn public_of(seed: [u8; 32]) -> [u8; 32] {
        ed25519_dalek::SigningKey::from_bytes(&seed)
            .verifying_key()
            .to_bytes()
    }

    #[test]
    fn keys_are_made_here_and_the_service_must_be_the_keys() {
        // Our key's service is the RFC 8032 public key of its seed: what Tor derives too.
        let ours = new_key([1; 32]);
        assert_eq!(key_service(&ours), Some(public_of([1; 32])));
        assert!(check_add_onion(&ours, &public_of([1; 32])).is_ok());
        assert!(matches!(
            check_add_onion(&ours, &public_of([2; 32])),
            Err(ControlError::WrongService(_))
        ));
        // A scalar that is not clamped: dalek (clamping) and Tor (not) would disagree on its
        // service, so it is no key of ours.
        let mut raw = data_encoding::BASE64
            .decode(ours.strip_prefix("ED25519-V3:").unwrap().as_bytes())
            .unwrap();
        raw[0] |= 1;
        let unclamped = format!("ED25519-V3:{}", data_encoding::BASE64.encode(&raw));
        assert_eq!(key_service(&unclamped), None);
        // Unpadded base64 (as some tools write it) reads as the same key.
        let unpadded = ours.trim_end_matches('=').to_string();
        assert_eq!(key_service(&unpadded), key_service(&ours));
        // ADD_ONION always names our key, and asks for none back.
        assert_eq!(
            add_onion_command(&ours, 8333, "127.0.0.1:18444"),
            format!("ADD_ONION {ours} Flags=DiscardPK Port=8333,127.0.0.1:18444\r\n")
        );
    }

    #[test]
    fn replies_arrive_in_pieces_and_errors_are_refusals() {
        let mut r = ReplyReader::new();
        for chunk in [
            &b"250-ServiceID=abc"[..],
            b"\r\n250-PrivateKey=ED25519-V3:AAA",
            b"=\r\n250 O",
            b"K\r\n",
        ] {
            r.feed(chunk);
        }
        let reply = r.next_reply().unwrap().unwrap();
        assert_eq!(reply.value("ServiceID").as_deref(), Some("abc"));
        assert_eq!(
            reply.value("PrivateKey").as_deref(),
            Some("ED25519-V3:AAA=")
        );
        r.feed(b"512 Bad arguments to ADD_ONION\r\n");
        let err = r.next_reply().unwrap().unwrap().ok_or_refused("ADD_ONION");
        assert!(matches!(
            err,
            Err(ControlError::Refused { status: 512, .. })
        ));
    }

    #[test]
    fn data_blocks_and_hostile_input() {
        let replies = read_all(b"250+onions/current=\r\nabc\r\ndef\r\n.\r\n250 OK\r\n");
        assert_eq!(replies[0].lines[0], "onions/current=\nabc\ndef");
        let mut r = ReplyReader::new();
        r.feed(&vec![b'2'; MAX_LINE_LEN + 1]);
        assert!(r.next_reply().is_err());
        let mut r = ReplyReader::new();
        r.feed(b"hello\r\n");
        assert!(r.next_reply().is_err());
        let mut r = ReplyReader::new();
        r.feed("250-x\r\n".repeat(MAX_REPLY_LINES + 1).as_bytes());
        assert!(r.next_reply().is_err());
    }

    #[test]
    fn safecookie_proofs_both_ways() {
        let cookie = [7u8; 32];
        let client_nonce = [1u8; 32];
        let server_nonce = [2u8; 32];
        let server_hash = hmac_sha256(SERVER_HASH_KEY, &[&cookie, &client_nonce, &server_nonce]);
        let challenge = read_all(
            format!(
                "250 AUTHCHALLENGE SERVERHASH={} SERVERNONCE={}\r\n",
                hex_encode(&server_hash),
                hex_encode(&server_nonce)
            )
            .as_bytes(),
        );
        let ours = safecookie_response(&cookie, &client_nonce, &challenge[0]).unwrap();
        assert_eq!(
            ours,
            hex_encode(&hmac_sha256(
                CLIENT_HASH_KEY,
                &[&cookie, &client_nonce, &server_nonce]
            ))
        );
        // A control port that does not know the cookie cannot prove it.
        assert_eq!(
            safecookie_response(&[8u8; 32], &client_nonce, &challenge[0]),
            Err(ControlError::BadServerHash)
        );
    }

    #[test]
    fn commands_and_keys() {
        assert!(valid_key(&new_key([3; 32])));
        assert!(!valid_key("ED25519-V3:abc+/="), "not 64 bytes");
        assert!(!valid_key("RSA1024:abc"));
        assert!(!valid_key("ED25519-V3:a b"));
        assert_eq!(quote("a\"b\\c"), "\"a\\\"b\\\\c\"");
        assert_eq!(unquote(&quote("a\"b\\c")), "a\"b\\c");
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..8)) {
            let mut r = ReplyReader::new();
            for c in chunks {
                r.feed(&c);
                while let Ok(Some(reply)) = r.next_reply() {
                    let _ = reply.value("ServiceID");
                    let _ = choose_auth(&reply, None, true);
                    let _ = parse_add_onion(&reply);
                }
            }
        }
    }
}
