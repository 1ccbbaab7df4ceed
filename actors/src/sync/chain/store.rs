//! Crash-safe header storage: an append-only file of headers, each followed by the first four
//! bytes of its hash, behind a versioned file header naming the network.
//!
//! Headers are appended in the order they were accepted (parents before children, forks
//! included), written at once and synced by group commit (every 20,000 headers or 500 ms, and
//! on a clean stop). On load every record is checked (length, hash check, and full validation
//! again through [`HeaderChain::accept`]); the file is cut back to the last good record, so a
//! kill -9 in the middle of a write loses at most the record being written, a power loss at
//! most the unsynced tail, and neither leaves a chain that will not reload. A file with a wrong
//! header (another network, another format) is refused as a whole: the caller sets it aside.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bitcoin::block::Header;
use bitcoin::consensus::deserialize;
use bitcoin::hashes::Hash;
use bitcoin::BlockHash;

use super::headers::{header_bytes, HeaderChain};

const FILE_MAGIC: &[u8; 8] = b"MSHDHDRS";
const FORMAT_VERSION: u16 = 1;
const FILE_HEADER_LEN: usize = 8 + 2 + 4;
const RECORD_LEN: usize = 80 + 4;

/// Headers appended before an fsync is due whatever the time (ten full `headers` messages):
/// an fsync per message cost more than validating it.
pub const GROUP_COMMIT_HEADERS: usize = 20_000;

/// Longest an appended header waits for its fsync.
pub const GROUP_COMMIT_INTERVAL: Duration = Duration::from_millis(500);

/// Why the header file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Reading or writing failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// Not a meshd header file, another format version, or another network's.
    #[error("not a header file of this network and format")]
    BadFileHeader,
}

/// What loading found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadReport {
    /// Headers loaded into the chain.
    pub loaded: usize,
    /// Bytes cut from the end (a torn or corrupt tail).
    pub truncated_bytes: u64,
}

/// The open header file.
#[derive(Debug)]
pub struct HeaderStore {
    file: File,
    path: PathBuf,
    /// Headers written since the last fsync.
    pending: usize,
    last_sync: Instant,
}

impl Drop for HeaderStore {
    fn drop(&mut self) {
        // A clean stop leaves nothing unsynced.
        let _ = self.sync();
    }
}

fn file_header(magic: [u8; 4]) -> Vec<u8> {
    let mut v = FILE_MAGIC.to_vec();
    v.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    v.extend_from_slice(&magic);
    v
}

impl HeaderStore {
    /// Opens (or creates) the file and loads it into `chain`.
    pub fn open(
        path: &Path,
        network_magic: [u8; 4],
        chain: &mut HeaderChain,
    ) -> Result<(HeaderStore, LoadReport), StoreError> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let expected = file_header(network_magic);
        if bytes.is_empty() {
            file.write_all(&expected)?;
            file.sync_all()?;
            if let Some(dir) = path.parent() {
                File::open(dir)?.sync_all()?;
            }
            let store = HeaderStore {
                file,
                path: path.to_path_buf(),
                pending: 0,
                last_sync: Instant::now(),
            };
            return Ok((
                store,
                LoadReport {
                    loaded: 0,
                    truncated_bytes: 0,
                },
            ));
        }
        if bytes.len() < FILE_HEADER_LEN || bytes[..FILE_HEADER_LEN] != expected[..] {
            return Err(StoreError::BadFileHeader);
        }
        let mut good = FILE_HEADER_LEN;
        let mut loaded = 0;
        for record in bytes[FILE_HEADER_LEN..].chunks(RECORD_LEN) {
            if record.len() < RECORD_LEN {
                break;
            }
            let Ok(h) = deserialize::<Header>(&record[..80]) else {
                break;
            };
            let hash = h.block_hash();
            if hash.as_byte_array()[..4] != record[80..] {
                break;
            }
            // Times were checked when the header first came in; do not refuse it now because
            // the clock moved (a header "from the future" then is from the past now).
            if chain.accept_hashed(&h, hash, u32::MAX).is_err() {
                break;
            }
            good += RECORD_LEN;
            loaded += 1;
        }
        let truncated = (bytes.len() - good) as u64;
        if truncated > 0 {
            file.set_len(good as u64)?;
            file.sync_all()?;
        }
        file.seek(SeekFrom::End(0))?;
        Ok((
            HeaderStore {
                file,
                path: path.to_path_buf(),
                pending: 0,
                last_sync: Instant::now(),
            },
            LoadReport {
                loaded,
                truncated_bytes: truncated,
            },
        ))
    }

    /// Appends accepted headers with their hashes (written, not yet synced: see
    /// [`sync`](Self::sync)).
    pub fn append(&mut self, headers: &[(Header, BlockHash)]) -> std::io::Result<()> {
        let mut buf = Vec::with_capacity(headers.len() * RECORD_LEN);
        for (h, hash) in headers {
            buf.extend_from_slice(&header_bytes(h));
            buf.extend_from_slice(&hash.as_byte_array()[..4]);
        }
        self.file.write_all(&buf)?;
        self.pending += headers.len();
        Ok(())
    }

    /// Makes appended headers durable.
    pub fn sync(&mut self) -> std::io::Result<()> {
        if self.pending > 0 {
            self.file.sync_data()?;
            self.pending = 0;
        }
        self.last_sync = Instant::now();
        Ok(())
    }

    /// Group commit: syncs once [`GROUP_COMMIT_HEADERS`] are pending or the oldest pending
    /// one has waited [`GROUP_COMMIT_INTERVAL`]. Appended headers are written at once (a
    /// kill -9 loses none of them); only an operating-system crash or power loss can take the
    /// unsynced tail, and the load cuts back to the last good record.
    pub fn sync_if_due(&mut self, now: Instant) -> std::io::Result<()> {
        let due = self.pending >= GROUP_COMMIT_HEADERS
            || (self.pending > 0
                && now.saturating_duration_since(self.last_sync) >= GROUP_COMMIT_INTERVAL);
        if due {
            self.sync()?;
        }
        Ok(())
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::NetworkId;
    use crate::sync::chain::headers::mine_header;
    use bitcoin::TxMerkleNode;

    fn build(n: u32) -> (HeaderChain, Vec<Header>) {
        let mut c = HeaderChain::new(&NetworkId::Regtest.profile());
        let mut parent = c.tip_header();
        let mut out = Vec::new();
        for i in 0..n {
            let h = mine_header(
                &parent,
                TxMerkleNode::from_byte_array([1; 32]),
                parent.time + 600 + i % 2,
                parent.bits,
            );
            c.accept(&h, u32::MAX / 2).unwrap();
            out.push(h);
            parent = h;
        }
        (c, out)
    }

    #[test]
    fn reloads_and_cuts_a_torn_tail_at_any_byte() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("headers.dat");
        let magic = NetworkId::Regtest.profile().magic.to_bytes();
        let (_, hs) = build(30);
        {
            let mut c = HeaderChain::new(&NetworkId::Regtest.profile());
            let (mut store, _) = HeaderStore::open(&path, magic, &mut c).unwrap();
            let hashed: Vec<_> = hs.iter().map(|h| (*h, h.block_hash())).collect();
            store.append(&hashed).unwrap();
            store.sync().unwrap();
        }
        let full = std::fs::read(&path).unwrap();
        // A kill -9 can leave the file cut anywhere: every cut reloads to a consistent prefix.
        for cut in [
            full.len(),
            full.len() - 1,
            full.len() - 83,
            FILE_HEADER_LEN + 10,
            FILE_HEADER_LEN,
        ] {
            std::fs::write(&path, &full[..cut]).unwrap();
            let mut c = HeaderChain::new(&NetworkId::Regtest.profile());
            let (_, report) = HeaderStore::open(&path, magic, &mut c).unwrap();
            let whole = (cut - FILE_HEADER_LEN) / RECORD_LEN;
            assert_eq!(report.loaded, whole);
            assert_eq!(c.height() as usize, whole);
            assert_eq!(
                std::fs::metadata(&path).unwrap().len() as usize,
                FILE_HEADER_LEN + whole * RECORD_LEN
            );
        }
        // A corrupt record in the middle: everything before it survives.
        let mut bad = full.clone();
        bad[FILE_HEADER_LEN + 5 * RECORD_LEN + 3] ^= 0xff;
        std::fs::write(&path, &bad).unwrap();
        let mut c = HeaderChain::new(&NetworkId::Regtest.profile());
        let (_, report) = HeaderStore::open(&path, magic, &mut c).unwrap();
        assert_eq!(report.loaded, 5);
    }

    #[test]
    fn another_networks_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("headers.dat");
        let mut c = HeaderChain::new(&NetworkId::Regtest.profile());
        HeaderStore::open(&path, NetworkId::Regtest.profile().magic.to_bytes(), &mut c).unwrap();
        let mut c = HeaderChain::new(&NetworkId::Regtest.profile());
        assert!(matches!(
            HeaderStore::open(
                &path,
                NetworkId::BsvRegtest.profile().magic.to_bytes(),
                &mut c
            ),
            Err(StoreError::BadFileHeader)
        ));
    }
}
