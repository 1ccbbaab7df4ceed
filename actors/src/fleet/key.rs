//! This node's fleet signing key: an ed25519 key that signs the ban advisories it publishes,
//! kept in `DATADIR/fleet_key` (mode 0600), made on first use. The file is text: a version
//! line, then the 32-byte secret seed in hex. Other nodes trust the public key only when
//! their operator lists it (`--fleet-trusted-keys`); `meshd fleet key` prints it.

use std::path::{Path, PathBuf};

use ed25519_dalek::SigningKey;

/// The key file's name in the data dir.
pub const FLEET_KEY_FILE: &str = "fleet_key";
/// The key file's first line (its format version).
const KEY_FILE_HEADER: &str = "meshd fleet ed25519 key v1";

/// Why the key cannot be had.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Reading or writing the file failed.
    #[error("{path}: {error}")]
    Io {
        /// The key file.
        path: PathBuf,
        /// What failed.
        error: std::io::Error,
    },
    /// The file is not a key file of ours (left alone: it may be the only copy of a key).
    #[error("{0}: not a meshd fleet key file; move it away to make a new key")]
    Malformed(PathBuf),
}

/// The key file of a data dir (the network's directory).
pub fn key_path(datadir: &Path) -> PathBuf {
    datadir.join(FLEET_KEY_FILE)
}

fn encode(key: &SigningKey) -> String {
    let seed: String = key.to_bytes().iter().map(|b| format!("{b:02x}")).collect();
    format!("{KEY_FILE_HEADER}\n{seed}\n")
}

fn decode(text: &str) -> Option<SigningKey> {
    let mut lines = text.lines();
    if lines.next()? != KEY_FILE_HEADER {
        return None;
    }
    let hex = lines.next()?.trim();
    if hex.len() != 64 || !hex.is_ascii() {
        return None;
    }
    let mut seed = [0u8; 32];
    for (i, b) in seed.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(SigningKey::from_bytes(&seed))
}

/// The data dir's key, made (from the system's CSPRNG, written atomically and 0600) when
/// there is none. Two processes making one at once end with the same key: the file is
/// created only if absent, and whoever loses reads the winner's.
pub fn load_or_create(datadir: &Path) -> Result<SigningKey, KeyError> {
    let path = key_path(datadir);
    let io = |error| KeyError::Io {
        path: path.clone(),
        error,
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => return decode(&text).ok_or_else(|| KeyError::Malformed(path.clone())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    let key = SigningKey::from_bytes(&rand::random::<[u8; 32]>());
    if crate::persist::create_new_atomic(&path, encode(&key).as_bytes()).map_err(io)? {
        return Ok(key);
    }
    let text = std::fs::read_to_string(&path).map_err(io)?;
    decode(&text).ok_or(KeyError::Malformed(path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn made_once_private_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_create(dir.path()).unwrap();
        let b = load_or_create(dir.path()).unwrap();
        assert_eq!(a.to_bytes(), b.to_bytes());
        let mode = std::fs::metadata(key_path(dir.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let other = tempfile::tempdir().unwrap();
        assert_ne!(
            load_or_create(other.path()).unwrap().to_bytes(),
            a.to_bytes()
        );
    }

    #[test]
    fn a_foreign_file_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(key_path(dir.path()), "something else\n").unwrap();
        assert!(matches!(
            load_or_create(dir.path()),
            Err(KeyError::Malformed(_))
        ));
        assert_eq!(
            std::fs::read_to_string(key_path(dir.path())).unwrap(),
            "something else\n"
        );
    }

    #[test]
    fn concurrent_makers_agree() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        let keys: Vec<[u8; 32]> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| s.spawn(|| load_or_create(&path).unwrap().to_bytes()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(keys.windows(2).all(|w| w[0] == w[1]));
    }
}
