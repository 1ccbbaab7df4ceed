//! The overlay's identity: one Ed25519 key, kept in `overlay_key.dat` in the data dir, so a
//! node keeps its libp2p peer id across restarts (peers' routing tables and DHT provider
//! records name it).
//!
//! The file is a meshd state file (see [`crate::persist`]: kind `OVLK`, version 1, written
//! atomically, mode 0600) holding the key's 32-byte secret. A damaged file is set aside
//! under a `.corrupt-<time>` name and a new key made (it is never overwritten, so an
//! operator can still recover a key a bad disk damaged); one that cannot be read, or that
//! a newer meshd wrote, fails the start instead, so the peer id never changes unasked.

use std::path::{Path, PathBuf};

use libp2p::identity::{ed25519, Keypair};
use tracing::{info, warn};

use crate::persist::{self, PersistError};

/// The key file's name in the data dir.
pub const OVERLAY_KEY_FILE: &str = "overlay_key.dat";
/// The key file's kind tag.
const KEY_KIND: [u8; 4] = *b"OVLK";
/// The key file's format version.
const KEY_VERSION: u16 = 1;

/// Why the overlay's key could not be had.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The key file could not be written (or a damaged one set aside).
    #[error("overlay key {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The key file could not be encoded.
    #[error("overlay key {path}: {source}")]
    Persist {
        /// The file.
        path: PathBuf,
        /// Why.
        source: PersistError,
    },
}

/// Loads the overlay key from `datadir`, or makes one and saves it.
pub fn load_or_create(datadir: &Path) -> Result<Keypair, IdentityError> {
    let path = datadir.join(OVERLAY_KEY_FILE);
    match persist::load::<Vec<u8>>(&path, KEY_KIND, KEY_VERSION) {
        Ok(Some(mut secret)) => match ed25519::SecretKey::try_from_bytes(&mut secret) {
            Ok(secret) => return Ok(ed25519::Keypair::from(secret).into()),
            Err(e) => {
                warn!(path = %path.display(), error = %e, "overlay key does not decode; setting it aside");
                set_aside(&path)?;
            }
        },
        Ok(None) => {}
        // A file we cannot read, or one a newer meshd wrote: refuse to start rather than
        // change our peer id behind the operator's back.
        Err(source @ (PersistError::Io(_) | PersistError::UnsupportedVersion { .. })) => {
            return Err(IdentityError::Persist { path, source });
        }
        // A damaged one: kept aside for the operator, and a new identity made.
        Err(e) => {
            warn!(path = %path.display(), error = %e, "overlay key does not load; setting it aside");
            set_aside(&path)?;
        }
    }
    let key = ed25519::Keypair::generate();
    let secret = key.secret().as_ref().to_vec();
    persist::save(&path, KEY_KIND, KEY_VERSION, &secret).map_err(|source| {
        IdentityError::Persist {
            path: path.clone(),
            source,
        }
    })?;
    let key: Keypair = key.into();
    info!(peer_id = %key.public().to_peer_id(), path = %path.display(), "new overlay identity");
    Ok(key)
}

fn set_aside(path: &Path) -> Result<(), IdentityError> {
    persist::set_aside(path)
        .map(|_| ())
        .map_err(|source| IdentityError::Io {
            path: path.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_key_survives_a_reload_and_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create(dir.path()).unwrap();
        let again = load_or_create(dir.path()).unwrap();
        assert_eq!(first.public().to_peer_id(), again.public().to_peer_id());
        let mode = std::fs::metadata(dir.path().join(OVERLAY_KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_damaged_key_is_set_aside_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create(dir.path()).unwrap();
        let path = dir.path().join(OVERLAY_KEY_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let second = load_or_create(dir.path()).unwrap();
        assert_ne!(first.public().to_peer_id(), second.public().to_peer_id());
        let aside: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains(".corrupt-"))
            .collect();
        assert_eq!(aside.len(), 1);
        assert_eq!(std::fs::read(aside[0].path()).unwrap(), bytes);
    }

    #[test]
    fn a_secret_of_the_wrong_length_is_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(OVERLAY_KEY_FILE);
        persist::save(&path, KEY_KIND, KEY_VERSION, &vec![7u8; 5]).unwrap();
        let key = load_or_create(dir.path()).unwrap();
        let reloaded = load_or_create(dir.path()).unwrap();
        assert_eq!(key.public().to_peer_id(), reloaded.public().to_peer_id());
        let aside = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains(".corrupt-"))
            .count();
        assert_eq!(aside, 1);
    }

    #[test]
    fn a_key_from_a_newer_meshd_fails_the_start_and_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(OVERLAY_KEY_FILE);
        persist::save(&path, KEY_KIND, KEY_VERSION + 1, &vec![7u8; 32]).unwrap();
        let before = std::fs::read(&path).unwrap();
        assert!(load_or_create(dir.path()).is_err());
        assert_eq!(std::fs::read(&path).unwrap(), before);
    }
}
