//! Crash-safe header storage: an append-only file of headers, each followed by the first four
//! bytes of its hash, behind a versioned file header naming the network.
//!
//! Headers are appended in the order they were accepted (parents before children, forks
//! included), written at once and synced by group commit (every 20,000 headers or 500 ms, and
//! on a clean stop). On load every record is checked (length, hash check, and full validation
//! again through [`HeaderChain::accept`]). A record the chain refuses in context (a fork whose
//! parent was evicted, a stale branch past the cap) or whose hash check fails in the middle
//! of the file is skipped, and loading goes on; only the tail after the last record that
//! passed its hash check (a torn write) is cut off. So a kill -9 in the middle of a write
//! loses at most the record being written, a power loss at most the unsynced tail, and one
//! bad record never costs the records after it. Records not on the loaded best chain
//! (skipped, duplicates, forks) are stale: past [`COMPACT_STALE_SHARE`] of the file it is
//! rewritten with the best chain alone. A file with a wrong header (another network, another
//! format) is refused as a whole: the caller sets it aside.
//!
//! A write that fails (a full disk) is cut back to the last whole record, so the file stays
//! aligned and loadable; the store then stops appending (the chain in memory goes on) and
//! [`HeaderStore::rewrite`] later writes the whole best chain to a new file (temp, fsync,
//! rename), which also drops stale forks from the file.

use std::fs::File;
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

/// Records read and validated per [`HeaderLoad::step`]: a 1.7 MB buffer and about 12 ms of
/// validation, so the Sync actor serves its mailbox at least that often while loading.
pub const LOAD_STEP_RECORDS: usize = 20_000;

/// Share of a header file's records that may be stale (off the best chain: skipped,
/// duplicate or forks) before a load rewrites it with the best chain alone (atomically:
/// temp, fsync, rename). Forks are rare, so a quarter means a file that kept junk (an old
/// fork storm, bad records), not one that grew with the chain.
pub const COMPACT_STALE_SHARE: f64 = 0.25;

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
    /// Whole records skipped: refused by the chain, or failing their hash check, before the
    /// last good record.
    pub skipped: usize,
    /// Bytes cut from the end (a torn or corrupt tail).
    pub truncated_bytes: u64,
}

impl LoadReport {
    /// Records kept in the file that are not on `chain`'s best chain, as a share of them.
    pub fn stale_share(&self, chain: &HeaderChain) -> f64 {
        let records = self.loaded + self.skipped;
        if records == 0 {
            return 0.0;
        }
        records.saturating_sub(chain.height() as usize) as f64 / records as f64
    }
}

/// The open header file.
#[derive(Debug)]
pub struct HeaderStore {
    file: File,
    path: PathBuf,
    /// Headers written since the last fsync.
    pending: usize,
    last_sync: Instant,
    /// Bytes of whole records in the file (what a failed write is cut back to).
    len: u64,
    /// Why the file is behind the chain (a failed write or sync), if it is.
    failed: Option<String>,
    network_magic: [u8; 4],
    /// An fsync handed out by [`sync_due`](Self::sync_due) has not reported back.
    syncing: bool,
    /// Which file a handed-out fsync is of: a rewrite replaces the file, and a late report
    /// on the old one then says nothing of the new.
    generation: u64,
}

/// An fsync of a header file's appended records, to be run away from the caller's thread:
/// on a real disk it takes milliseconds to tens of them, and a block's relay must not wait
/// behind it. Run it with [`run`](Self::run), hand the result to [`HeaderStore::synced`].
#[derive(Debug)]
pub struct PendingSync {
    file: File,
    generation: u64,
}

/// What a [`PendingSync`] found.
#[derive(Debug)]
pub struct SyncReport {
    generation: u64,
    result: std::io::Result<()>,
}

impl PendingSync {
    /// Syncs the file's data (blocking).
    pub fn run(self) -> SyncReport {
        SyncReport {
            generation: self.generation,
            result: self.file.sync_data(),
        }
    }
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

/// What became of one record on load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Record {
    /// In the chain (new, or a duplicate of a known header).
    Loaded,
    /// Whole and with a good hash check, but refused by the chain in context: skipped.
    Refused,
    /// Short, undecodable or failing its hash check.
    Bad,
}

/// Takes one record into `chain`.
fn load_record(record: &[u8], chain: &mut HeaderChain) -> Record {
    if record.len() < RECORD_LEN {
        return Record::Bad;
    }
    let Ok(h) = deserialize::<Header>(&record[..80]) else {
        return Record::Bad;
    };
    let hash = h.block_hash();
    if hash.as_byte_array()[..4] != record[80..RECORD_LEN] {
        return Record::Bad;
    }
    // Times were checked when the header first came in; do not refuse it now because the
    // clock moved (a header "from the future" then is from the past now).
    match chain.accept_hashed(&h, hash, u32::MAX) {
        Ok(_) => Record::Loaded,
        Err(_) => Record::Refused,
    }
}

/// Where a load stands: the good prefix (up to the last record that passed its hash check)
/// and what was loaded and skipped within it.
#[derive(Debug, Clone, Copy, Default)]
struct Tally {
    /// Records since the good prefix's end that failed (cut off unless a good one follows).
    pending_bad: usize,
    good_records: usize,
    loaded: usize,
    skipped: usize,
}

impl Tally {
    fn take(&mut self, outcome: Record) {
        match outcome {
            Record::Bad => self.pending_bad += 1,
            good => {
                // Bad records followed by a good one were corruption, not a torn tail.
                self.skipped += self.pending_bad;
                self.good_records += self.pending_bad + 1;
                self.pending_bad = 0;
                if good == Record::Loaded {
                    self.loaded += 1;
                } else {
                    self.skipped += 1;
                }
            }
        }
    }
}

/// Reads a header file's bytes into `chain`: checks the file header, then takes every
/// record, skipping those the chain refuses or that fail their hash check, up to the last
/// record that passes it. Returns the length of that good prefix (file header included), the
/// headers loaded and the records skipped. Pure, for its fuzz target ([`HeaderLoad`] reads a
/// file the same way).
pub fn load_records(
    bytes: &[u8],
    network_magic: [u8; 4],
    chain: &mut HeaderChain,
) -> Result<(usize, usize, usize), StoreError> {
    let expected = file_header(network_magic);
    if bytes.len() < FILE_HEADER_LEN || bytes[..FILE_HEADER_LEN] != expected[..] {
        return Err(StoreError::BadFileHeader);
    }
    let mut tally = Tally::default();
    for record in bytes[FILE_HEADER_LEN..].chunks(RECORD_LEN) {
        tally.take(load_record(record, chain));
    }
    Ok((
        FILE_HEADER_LEN + tally.good_records * RECORD_LEN,
        tally.loaded,
        tally.skipped,
    ))
}

/// A header file being loaded into a chain in steps, so that its owner can do other work
/// between them (the Sync actor answers peers while a long chain loads). Records are read
/// a step at a time (the file is never held in memory whole) and checked as
/// [`load_records`] does; [`finish`](Self::finish) cuts a torn or bad tail off and gives
/// the store to append to.
#[derive(Debug)]
pub struct HeaderLoad {
    file: File,
    path: PathBuf,
    network_magic: [u8; 4],
    tally: Tally,
    /// Bytes of the file when it was opened.
    file_len: u64,
    done: bool,
    buf: Vec<u8>,
}

impl HeaderLoad {
    /// Opens (or creates) the file and checks its file header.
    pub fn begin(path: &Path, network_magic: [u8; 4]) -> Result<HeaderLoad, StoreError> {
        let mut file = crate::persist::private_options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        crate::persist::make_private(&file)?;
        let file_len = file.metadata()?.len();
        let expected = file_header(network_magic);
        if file_len == 0 {
            file.write_all(&expected)?;
            file.sync_all()?;
            if let Some(dir) = path.parent() {
                File::open(dir)?.sync_all()?;
            }
        } else {
            let mut head = [0u8; FILE_HEADER_LEN];
            if file.read_exact(&mut head).is_err() || head[..] != expected[..] {
                return Err(StoreError::BadFileHeader);
            }
        }
        Ok(HeaderLoad {
            file,
            path: path.to_path_buf(),
            network_magic,
            tally: Tally::default(),
            file_len: file_len.max(FILE_HEADER_LEN as u64),
            done: file_len <= FILE_HEADER_LEN as u64,
            buf: Vec::new(),
        })
    }

    /// Loads up to `max_records` more records into `chain`; true once the whole file (or its
    /// good prefix) is in.
    pub fn step(
        &mut self,
        chain: &mut HeaderChain,
        max_records: usize,
    ) -> Result<bool, StoreError> {
        if self.done {
            return Ok(true);
        }
        let want = max_records.max(1).saturating_mul(RECORD_LEN);
        self.buf.resize(want, 0);
        let mut got = 0;
        while got < want {
            match self.file.read(&mut self.buf[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        for record in self.buf[..got].chunks(RECORD_LEN) {
            self.tally.take(load_record(record, chain));
        }
        if got < want {
            self.done = true;
        }
        if self.done {
            self.buf = Vec::new();
        }
        Ok(self.done)
    }

    /// Headers loaded so far.
    pub fn loaded(&self) -> usize {
        self.tally.loaded
    }

    /// Ends the load (whatever is not loaded yet is cut off, so call it once
    /// [`step`](Self::step) returned true): the store to append to, and what was found.
    pub fn finish(mut self) -> Result<(HeaderStore, LoadReport), StoreError> {
        let good = (FILE_HEADER_LEN + self.tally.good_records * RECORD_LEN) as u64;
        let truncated = self.file_len.saturating_sub(good);
        if truncated > 0 {
            self.file.set_len(good)?;
            self.file.sync_all()?;
        }
        self.file.seek(SeekFrom::Start(good))?;
        Ok((
            HeaderStore {
                file: self.file,
                path: self.path,
                pending: 0,
                last_sync: Instant::now(),
                len: good,
                failed: None,
                network_magic: self.network_magic,
                syncing: false,
                generation: 0,
            },
            LoadReport {
                loaded: self.tally.loaded,
                skipped: self.tally.skipped,
                truncated_bytes: truncated,
            },
        ))
    }
}

/// The file header (magic, format version, network) a header file of `network_magic` starts
/// with.
pub fn file_header_bytes(network_magic: [u8; 4]) -> Vec<u8> {
    file_header(network_magic)
}

/// Bytes per record: the header, then the first four bytes of its hash.
pub const RECORD_BYTES: usize = RECORD_LEN;

impl HeaderStore {
    /// Opens (or creates) the file and loads it into `chain` at once (see [`HeaderLoad`] to
    /// load in steps).
    pub fn open(
        path: &Path,
        network_magic: [u8; 4],
        chain: &mut HeaderChain,
    ) -> Result<(HeaderStore, LoadReport), StoreError> {
        let mut load = HeaderLoad::begin(path, network_magic)?;
        while !load.step(chain, LOAD_STEP_RECORDS)? {}
        load.finish()
    }

    /// Appends accepted headers with their hashes (written, not yet synced: see
    /// [`sync`](Self::sync)). After a failure nothing is appended until a
    /// [`rewrite`](Self::rewrite) succeeds (an append after a gap would not load).
    pub fn append(&mut self, headers: &[(Header, BlockHash)]) -> std::io::Result<()> {
        if self.failed.is_some() {
            return Ok(());
        }
        let mut buf = Vec::with_capacity(headers.len() * RECORD_LEN);
        for (h, hash) in headers {
            buf.extend_from_slice(&header_bytes(h));
            buf.extend_from_slice(&hash.as_byte_array()[..4]);
        }
        if let Err(e) = self.file.write_all(&buf) {
            self.fail(&e);
            return Err(e);
        }
        self.len += buf.len() as u64;
        self.pending += headers.len();
        Ok(())
    }

    /// Cuts a partly written batch off (so the file stays whole records) and stops appending.
    fn fail(&mut self, e: &std::io::Error) {
        let _ = self.file.set_len(self.len);
        let _ = self.file.seek(SeekFrom::Start(self.len));
        self.failed = Some(e.to_string());
        self.pending = 0;
    }

    /// Why the file is behind the chain in memory, if it is.
    pub fn failure(&self) -> Option<&str> {
        self.failed.as_deref()
    }

    /// Makes appended headers durable.
    pub fn sync(&mut self) -> std::io::Result<()> {
        if self.pending > 0 {
            if let Err(e) = self.file.sync_data() {
                self.fail(&e);
                return Err(e);
            }
            self.pending = 0;
        }
        self.last_sync = Instant::now();
        Ok(())
    }

    /// Writes `chain`'s best chain to a new file beside this one (fsynced), renames it over
    /// this one and syncs the directory; on success appending resumes. Stale forks are not
    /// carried over. On failure the old file stays as it was and the temporary one is removed.
    pub fn rewrite(&mut self, chain: &HeaderChain) -> std::io::Result<()> {
        let tmp = self.path.with_extension("dat.tmp");
        let written = (|| {
            let mut file = crate::persist::private_options()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)?;
            let mut w = std::io::BufWriter::with_capacity(1 << 20, &mut file);
            w.write_all(&file_header(self.network_magic))?;
            for height in 1..=chain.height() {
                let (Some(h), Some(hash)) =
                    (chain.header_at_height(height), chain.hash_at_height(height))
                else {
                    return Err(std::io::Error::other("best chain has a gap"));
                };
                w.write_all(&header_bytes(&h))?;
                w.write_all(&hash.as_byte_array()[..4])?;
            }
            w.flush()?;
            drop(w);
            file.sync_all()?;
            std::fs::rename(&tmp, &self.path)?;
            if let Some(dir) = self.path.parent() {
                File::open(dir)?.sync_all()?;
            }
            Ok(file)
        })();
        match written {
            Ok(mut file) => {
                let len = file.seek(SeekFrom::End(0))?;
                self.file = file;
                self.len = len;
                self.pending = 0;
                self.failed = None;
                self.last_sync = Instant::now();
                // A sync still running is of the old file.
                self.generation += 1;
                self.syncing = false;
                Ok(())
            }
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                Err(e)
            }
        }
    }

    /// Group commit: syncs once [`GROUP_COMMIT_HEADERS`] are pending or the oldest pending
    /// one has waited [`GROUP_COMMIT_INTERVAL`]. Appended headers are written at once (a
    /// kill -9 loses none of them); only an operating-system crash or power loss can take the
    /// unsynced tail, and the load cuts back to the last good record.
    pub fn sync_if_due(&mut self, now: Instant) -> std::io::Result<()> {
        if self.is_due(now) {
            self.sync()?;
        }
        Ok(())
    }

    fn is_due(&self, now: Instant) -> bool {
        self.pending >= GROUP_COMMIT_HEADERS
            || (self.pending > 0
                && now.saturating_duration_since(self.last_sync) >= GROUP_COMMIT_INTERVAL)
    }

    /// The group commit of [`sync_if_due`](Self::sync_if_due), handed out to be run on
    /// another thread: `None` when none is due, one is already running, or the file failed.
    /// The headers it covers count as synced from now; a failure reported to
    /// [`synced`](Self::synced) stops appending, as a failed [`sync`](Self::sync) does.
    pub fn sync_due(&mut self, now: Instant) -> Option<PendingSync> {
        if self.syncing || self.failed.is_some() || !self.is_due(now) {
            return None;
        }
        match self.file.try_clone() {
            Ok(file) => {
                self.syncing = true;
                self.pending = 0;
                self.last_sync = now;
                Some(PendingSync {
                    file,
                    generation: self.generation,
                })
            }
            Err(e) => {
                // No second handle (out of descriptors): synced here, as before.
                let _ = self.sync();
                tracing::debug!(error = %e, "header file synced in place");
                None
            }
        }
    }

    /// A [`PendingSync`] that will never report (its thread is gone): the headers it held
    /// count as unsynced again, and the next one may start.
    pub fn sync_lost(&mut self) {
        self.syncing = false;
        self.pending = self.pending.max(1);
    }

    /// The report of a [`PendingSync`]. An error is the file's failure (returned, and
    /// appending stops until a rewrite); a report on a file since replaced is ignored.
    pub fn synced(&mut self, report: SyncReport) -> std::io::Result<()> {
        if report.generation != self.generation {
            return Ok(());
        }
        self.syncing = false;
        if let Err(e) = report.result {
            self.fail(&e);
            return Err(e);
        }
        Ok(())
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whole records in the file.
    pub fn records(&self) -> usize {
        (self.len as usize).saturating_sub(FILE_HEADER_LEN) / RECORD_LEN
    }

    /// Records in the file that are not on `chain`'s best chain (forks left by a reorg,
    /// headers evicted from memory), as a share of them.
    pub fn stale_share(&self, chain: &HeaderChain) -> f64 {
        let records = self.records();
        if records == 0 {
            return 0.0;
        }
        records.saturating_sub(chain.height() as usize) as f64 / records as f64
    }

    /// Rewrites the file with the best chain alone when more than [`COMPACT_STALE_SHARE`]
    /// of it is stale and it is writable; the share it had when it was, if it was. Each
    /// compaction needs a third of the best chain's length in new stale records before the
    /// next, so a peer's forks cannot make it rewrite often.
    pub fn compact_if_stale(&mut self, chain: &HeaderChain) -> std::io::Result<Option<f64>> {
        let stale = self.stale_share(chain);
        if self.failed.is_some() || stale <= COMPACT_STALE_SHARE {
            return Ok(None);
        }
        self.rewrite(chain)?;
        Ok(Some(stale))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::NetworkId;
    use crate::sync::chain::headers::{mine_chain, mine_header};
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
    fn the_group_commit_runs_elsewhere_once_at_a_time_and_its_failure_stops_appending() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("headers.dat");
        let magic = NetworkId::Regtest.profile().magic.to_bytes();
        let (chain, hs) = build(3);
        let hashed: Vec<_> = hs.iter().map(|h| (*h, h.block_hash())).collect();
        let mut c = HeaderChain::new(&NetworkId::Regtest.profile());
        let (mut store, _) = HeaderStore::open(&path, magic, &mut c).unwrap();
        let t0 = Instant::now();
        assert!(store.sync_due(t0).is_none(), "nothing appended");
        store.append(&hashed[..1]).unwrap();
        let later = t0 + GROUP_COMMIT_INTERVAL + Duration::from_millis(1);
        let job = store.sync_due(later).expect("due after the interval");
        // One at a time: more appends wait for the running one to report.
        store.append(&hashed[1..2]).unwrap();
        assert!(store.sync_due(later + GROUP_COMMIT_INTERVAL * 2).is_none());
        store.synced(job.run()).unwrap();
        let job = store
            .sync_due(later + GROUP_COMMIT_INTERVAL * 2)
            .expect("the next one, once the first reported");
        // A report on a file since rewritten says nothing of the new one.
        store.rewrite(&chain).unwrap();
        let stale = job.run();
        store
            .synced(SyncReport {
                generation: stale.generation,
                result: Err(std::io::Error::other("old file")),
            })
            .unwrap();
        assert!(store.failure().is_none());
        // A failed sync of the file in use stops appending, as a failed in-place sync does.
        store.append(&hashed[2..3]).unwrap();
        let job = store
            .sync_due(later + GROUP_COMMIT_INTERVAL * 4)
            .expect("due");
        let generation = job.generation;
        assert!(store
            .synced(SyncReport {
                generation,
                result: Err(std::io::Error::other("disk gone")),
            })
            .is_err());
        assert!(store.failure().is_some());
        assert!(store.sync_due(later + GROUP_COMMIT_INTERVAL * 8).is_none());
    }

    #[test]
    fn a_rewrite_holds_the_best_chain_and_appending_goes_on_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("headers.dat");
        let magic = NetworkId::Regtest.profile().magic.to_bytes();
        let (chain, hs) = build(40);
        let hashed: Vec<_> = hs.iter().map(|h| (*h, h.block_hash())).collect();
        {
            let mut c = HeaderChain::new(&NetworkId::Regtest.profile());
            let (mut store, _) = HeaderStore::open(&path, magic, &mut c).unwrap();
            // Only the first half made it to disk (as if the disk filled up).
            store.append(&hashed[..20]).unwrap();
            store.rewrite(&chain).unwrap();
            assert!(store.failure().is_none());
            assert!(!path.with_extension("dat.tmp").exists());
        }
        let mut c = HeaderChain::new(&NetworkId::Regtest.profile());
        let (mut store, report) = HeaderStore::open(&path, magic, &mut c).unwrap();
        assert_eq!((report.loaded, report.truncated_bytes), (40, 0));
        assert_eq!(c.tip(), chain.tip());
        // Appends after a rewrite land after its last record.
        let (_, more) = build(41);
        let last = more[40];
        c.accept(&last, u32::MAX / 2).unwrap();
        store.append(&[(last, last.block_hash())]).unwrap();
        drop(store);
        let mut c = HeaderChain::new(&NetworkId::Regtest.profile());
        let (_, report) = HeaderStore::open(&path, magic, &mut c).unwrap();
        assert_eq!(report.loaded, 41);
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
        // A corrupt record in the middle: everything before it survives, it and the records
        // that needed it are skipped, and the file is not cut (before: cut after record 5).
        let mut bad = full.clone();
        bad[FILE_HEADER_LEN + 5 * RECORD_LEN + 3] ^= 0xff;
        std::fs::write(&path, &bad).unwrap();
        let mut c = HeaderChain::new(&NetworkId::Regtest.profile());
        let (_, report) = HeaderStore::open(&path, magic, &mut c).unwrap();
        assert_eq!(
            (report.loaded, report.skipped, report.truncated_bytes),
            (5, 25, 0)
        );
        assert_eq!(std::fs::metadata(&path).unwrap().len() as usize, full.len());
        assert!(report.stale_share(&c) > COMPACT_STALE_SHARE);
    }

    #[test]
    fn a_file_gone_stale_at_run_time_is_compacted_to_the_best_chain() {
        // A reorg leaves the old branch's records in the file: past a quarter of it, the file
        // is rewritten with the best chain alone without waiting for a restart.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("headers.dat");
        let magic = NetworkId::Regtest.profile().magic.to_bytes();
        let (mut c, old) = build(20);
        let (mut store, _) = HeaderStore::open(
            &path,
            magic,
            &mut HeaderChain::new(&NetworkId::Regtest.profile()),
        )
        .unwrap();
        store
            .append(&old.iter().map(|h| (*h, h.block_hash())).collect::<Vec<_>>())
            .unwrap();
        assert_eq!(store.compact_if_stale(&c).unwrap(), None, "nothing stale");
        // A longer branch from genesis (other merkle roots, so other hashes): a reorg.
        let genesis = NetworkId::Regtest.profile().genesis;
        let new = mine_chain(&genesis, 30, 601);
        for h in &new {
            c.accept(h, u32::MAX / 2).unwrap();
        }
        assert_eq!(c.tip(), new[29].block_hash());
        store
            .append(&new.iter().map(|h| (*h, h.block_hash())).collect::<Vec<_>>())
            .unwrap();
        assert_eq!(store.records(), 50);
        let share = store.compact_if_stale(&c).unwrap().expect("20 of 50 stale");
        assert!((share - 0.4).abs() < 1e-9);
        assert_eq!(store.records(), 30);
        assert_eq!(
            std::fs::metadata(&path).unwrap().len() as usize,
            FILE_HEADER_LEN + 30 * RECORD_LEN
        );
        // Appending goes on after it, and the file loads to the new tip.
        let more = mine_chain(&new[29], 2, 600);
        for h in &more {
            c.accept(h, u32::MAX / 2).unwrap();
        }
        store
            .append(
                &more
                    .iter()
                    .map(|h| (*h, h.block_hash()))
                    .collect::<Vec<_>>(),
            )
            .unwrap();
        store.sync().unwrap();
        drop(store);
        let mut loaded = HeaderChain::new(&NetworkId::Regtest.profile());
        let (_, report) = HeaderStore::open(&path, magic, &mut loaded).unwrap();
        assert_eq!((report.loaded, report.skipped), (32, 0));
        assert_eq!(loaded.tip(), c.tip());
    }

    #[test]
    fn a_record_the_chain_refuses_is_skipped_and_the_rest_loads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("headers.dat");
        let magic = NetworkId::Regtest.profile().magic.to_bytes();
        let (_, hs) = build(30);
        // A well-formed record whose parent is unknown, between good ones, and a torn tail.
        let genesis = NetworkId::Regtest.profile().genesis;
        let stray_parent = Header {
            prev_blockhash: BlockHash::from_byte_array([3; 32]),
            ..genesis
        };
        let stray = mine_header(
            &stray_parent,
            TxMerkleNode::from_byte_array([2; 32]),
            genesis.time + 1,
            genesis.bits,
        );
        let mut records: Vec<(Header, BlockHash)> =
            hs[..10].iter().map(|h| (*h, h.block_hash())).collect();
        records.push((stray, stray.block_hash()));
        records.extend(hs[10..].iter().map(|h| (*h, h.block_hash())));
        {
            let mut c = HeaderChain::new(&NetworkId::Regtest.profile());
            let (mut store, _) = HeaderStore::open(&path, magic, &mut c).unwrap();
            store.append(&records).unwrap();
            store.sync().unwrap();
        }
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.extend_from_slice(&[0x42; 50]);
        std::fs::write(&path, &bytes).unwrap();
        let mut c = HeaderChain::new(&NetworkId::Regtest.profile());
        let (_, report) = HeaderStore::open(&path, magic, &mut c).unwrap();
        assert_eq!(
            (report.loaded, report.skipped, report.truncated_bytes),
            (30, 1, 50)
        );
        assert_eq!(
            c.height(),
            30,
            "the records after the refused one loaded (before: 10)"
        );
        assert!(report.stale_share(&c) < COMPACT_STALE_SHARE);
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
