//! The one place meshd writes state files, and the one module that uses bincode.
//!
//! File layout: `MSHD` (4 bytes), a kind tag (4 bytes, e.g. `BANS`), a format version
//! (u16 LE), the payload length (u32 LE), the first 4 bytes of the payload's double SHA-256,
//! then the payload: bincode 2 (standard config) of a serde value. Writes are atomic: a temp
//! file in the same directory is written and fsynced, renamed over the target, and the
//! directory is fsynced, so a kill -9 at any moment leaves either the old file or the new one.
//! Loading checks every header field; a file that fails is reported as corrupt, and
//! [`set_aside`] moves it out of the way under a `.corrupt-<unix time>` name.
//!
//! bincode 2.0.1 is the last release (3.0.0 is an empty tombstone): it is pinned, and the
//! version field lets a later format migrate away from it.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::wire::frame::payload_checksum;

const FILE_MAGIC: [u8; 4] = *b"MSHD";
const HEADER_LEN: usize = 4 + 4 + 2 + 4 + 4;

/// Largest state file we load (64 MiB).
///
/// # Security
/// State files are ours, but a damaged length field must not make us allocate gigabytes.
pub const MAX_STATE_FILE: u64 = 64 * 1024 * 1024;

/// A state file that cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    /// Reading or writing failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// Not a meshd file of this kind.
    #[error("not a meshd {expected} file")]
    BadHeader {
        /// The kind expected.
        expected: String,
    },
    /// Written by a format version we do not read.
    #[error("format version {found} is not supported (this meshd reads {supported})")]
    UnsupportedVersion {
        /// Version in the file.
        found: u16,
        /// Version we read.
        supported: u16,
    },
    /// Shorter than its header says.
    #[error("truncated: {have} of {want} payload bytes")]
    Truncated {
        /// Bytes present.
        have: usize,
        /// Bytes the header announces.
        want: usize,
    },
    /// The payload does not match its checksum.
    #[error("checksum mismatch")]
    BadChecksum,
    /// The payload does not decode.
    #[error("payload does not decode: {0}")]
    Decode(String),
    /// Larger than [`MAX_STATE_FILE`].
    #[error("file of {0} bytes is larger than the state-file limit")]
    TooLarge(u64),
}

fn bincode_config() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// Encodes `value` into the file format.
pub fn encode<T: Serialize>(
    kind: [u8; 4],
    version: u16,
    value: &T,
) -> Result<Vec<u8>, PersistError> {
    let payload = bincode::serde::encode_to_vec(value, bincode_config())
        .map_err(|e| PersistError::Decode(e.to_string()))?;
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&FILE_MAGIC);
    out.extend_from_slice(&kind);
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&payload_checksum(&payload));
    out.extend_from_slice(&payload);
    Ok(out)
}

/// Decodes the file format.
pub fn decode<T: DeserializeOwned>(
    kind: [u8; 4],
    version: u16,
    bytes: &[u8],
) -> Result<T, PersistError> {
    let bad = || PersistError::BadHeader {
        expected: String::from_utf8_lossy(&kind).into_owned(),
    };
    if bytes.len() < HEADER_LEN || bytes[..4] != FILE_MAGIC || bytes[4..8] != kind {
        return Err(bad());
    }
    let found = u16::from_le_bytes([bytes[8], bytes[9]]);
    if found != version {
        return Err(PersistError::UnsupportedVersion {
            found,
            supported: version,
        });
    }
    let want = u32::from_le_bytes([bytes[10], bytes[11], bytes[12], bytes[13]]) as usize;
    let payload = &bytes[HEADER_LEN..];
    if payload.len() != want {
        return Err(PersistError::Truncated {
            have: payload.len(),
            want,
        });
    }
    if payload_checksum(payload) != bytes[14..18] {
        return Err(PersistError::BadChecksum);
    }
    let (value, used) = bincode::serde::decode_from_slice(payload, bincode_config())
        .map_err(|e| PersistError::Decode(e.to_string()))?;
    if used != payload.len() {
        return Err(PersistError::Decode("trailing bytes".into()));
    }
    Ok(value)
}

/// Writes `value` to `path` atomically.
pub fn save<T: Serialize>(
    path: &Path,
    kind: [u8; 4],
    version: u16,
    value: &T,
) -> Result<(), PersistError> {
    let bytes = encode(kind, version, value)?;
    write_atomic(path, &bytes)?;
    Ok(())
}

/// Mode of every state file: the node's only (peers' addresses, bans, keys; Core creates
/// its files under umask 077).
pub const STATE_FILE_MODE: u32 = 0o600;

/// Mode of the data directory and its network subdirectories.
pub const STATE_DIR_MODE: u32 = 0o700;

/// Creates `dir` and any missing parents as private directories (mode [`STATE_DIR_MODE`]);
/// an existing directory keeps its mode here (the node's own data directory is then closed
/// by [`make_dir_private`]; parents the operator chose are left as they are).
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(STATE_DIR_MODE)
        .create(dir)
}

/// Makes an existing directory private ([`STATE_DIR_MODE`]) when others may enter or read it
/// (one made by an older meshd, or by hand under umask 022). True when its mode changed.
pub fn make_dir_private(dir: &Path) -> std::io::Result<bool> {
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(dir)?.permissions().mode() & 0o777;
    if mode & 0o077 == 0 {
        return Ok(false);
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(STATE_DIR_MODE))?;
    Ok(true)
}

/// Open options that create a file private to the node (mode [`STATE_FILE_MODE`]).
pub fn private_options() -> fs::OpenOptions {
    use std::os::unix::fs::OpenOptionsExt;
    let mut o = fs::OpenOptions::new();
    o.mode(STATE_FILE_MODE);
    o
}

/// Makes an existing file private (one created by an older meshd under a looser umask).
pub fn make_private(file: &File) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = file.metadata()?.permissions().mode() & 0o777;
    if mode != STATE_FILE_MODE {
        file.set_permissions(fs::Permissions::from_mode(STATE_FILE_MODE))?;
    }
    Ok(())
}

/// The directory `path` lives in, created private if missing.
fn state_dir(path: &Path) -> std::io::Result<&Path> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    create_private_dir(dir)?;
    Ok(dir)
}

/// Writes `bytes` into a private temp file beside `path`, fsynced, and returns its name. A
/// name of its own per call: two writers of one file (a Manager restarted while its
/// predecessor's write is still in flight) never write into one temp file.
fn write_temp(path: &Path, bytes: &[u8]) -> std::io::Result<PathBuf> {
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_extension(format!("tmp-{}-{n}", std::process::id()));
    let mut f = private_options()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)?;
    make_private(&f)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(tmp)
}

/// Writes `bytes` to `path` atomically: a temporary file beside it, fsynced, renamed over
/// it, and the directory synced; a crash leaves the old file or the new one, never a mix.
/// The file is private ([`STATE_FILE_MODE`]).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = state_dir(path)?;
    let tmp = write_temp(path, bytes)?;
    // The last rename wins whole.
    fs::rename(&tmp, path)?;
    // The rename is durable only once the directory entry is.
    File::open(dir)?.sync_all()?;
    Ok(())
}

/// Writes `bytes` to `path` atomically unless `path` exists: a private temp file, fsynced,
/// then hard-linked to `path` (which fails if another writer got there first) and the
/// directory synced. True when this call created it; false when it was there already.
pub fn create_new_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<bool> {
    let dir = state_dir(path)?;
    let tmp = write_temp(path, bytes)?;
    let linked = fs::hard_link(&tmp, path);
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            File::open(dir)?.sync_all()?;
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e),
    }
}

/// Loads `path`; `Ok(None)` if it does not exist.
pub fn load<T: DeserializeOwned>(
    path: &Path,
    kind: [u8; 4],
    version: u16,
) -> Result<Option<T>, PersistError> {
    let meta = match fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    if meta.len() > MAX_STATE_FILE {
        return Err(PersistError::TooLarge(meta.len()));
    }
    let bytes = fs::read(path)?;
    decode(kind, version, &bytes).map(Some)
}

/// Moves a corrupt file aside; returns its new name.
pub fn set_aside(path: &Path) -> std::io::Result<PathBuf> {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".corrupt-{stamp}"));
    let aside = PathBuf::from(name);
    fs::rename(path, &aside)?;
    Ok(aside)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trip_and_every_damage_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.dat");
        let value = vec![(1u32, "a".to_string()), (2, "bb".into())];
        save(&path, *b"TEST", 1, &value).unwrap();
        assert_eq!(
            load::<Vec<(u32, String)>>(&path, *b"TEST", 1).unwrap(),
            Some(value)
        );
        assert!(matches!(
            load::<Vec<(u32, String)>>(&path, *b"OTHR", 1),
            Err(PersistError::BadHeader { .. })
        ));
        assert!(matches!(
            load::<Vec<(u32, String)>>(&path, *b"TEST", 2),
            Err(PersistError::UnsupportedVersion { found: 1, .. })
        ));
        let bytes = fs::read(&path).unwrap();
        fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
        assert!(matches!(
            load::<Vec<(u32, String)>>(&path, *b"TEST", 1),
            Err(PersistError::Truncated { .. })
        ));
        let mut flipped = bytes.clone();
        *flipped.last_mut().unwrap() ^= 1;
        fs::write(&path, &flipped).unwrap();
        assert!(matches!(
            load::<Vec<(u32, String)>>(&path, *b"TEST", 1),
            Err(PersistError::BadChecksum)
        ));
        let aside = set_aside(&path).unwrap();
        assert!(aside.exists() && !path.exists());
        assert_eq!(
            load::<Vec<(u32, String)>>(&path, *b"TEST", 1).unwrap(),
            None
        );
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode::<Vec<String>>(*b"TEST", 1, &bytes);
        }
    }
}
