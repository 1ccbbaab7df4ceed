//! `DATADIR/<network>/meshd.json`: how to reach a running node. The node writes it once
//! its admin API and metrics are bound (atomically, mode 0600) and removes it when it
//! stops; the client subcommands read it, so `--datadir` (or `--config`) alone finds the
//! node, its API port and its cookie, as bitcoin-cli finds its node from bitcoin.conf.
//!
//! A file left by a node that was killed is recognised by the data dir's lock no longer
//! being held by its pid, and ignored; the next start replaces it.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The file's name in the network's data directory.
pub const FILE_NAME: &str = "meshd.json";
/// The format written; a reader refuses a newer one rather than misread it.
pub const FORMAT: u32 = 1;

/// What a running node says of itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeFile {
    /// [`FORMAT`].
    pub format: u32,
    /// meshd's version.
    pub version: String,
    /// The node's process id.
    pub pid: u32,
    /// The network's name (`regtest`, `mainnet`, ...).
    pub network: String,
    /// The network's data directory, absolute.
    pub datadir: PathBuf,
    /// The admin API's address, if it serves one.
    pub api: Option<String>,
    /// The metrics endpoint's address, if it serves one.
    pub metrics: Option<String>,
    /// The JSON-RPC's address, if it serves one (absent in files of earlier versions).
    #[serde(default)]
    pub rpc: Option<String>,
    /// The P2P listening addresses.
    pub p2p: Vec<String>,
    /// When the node started, unix seconds.
    pub start_time: u64,
}

impl NodeFile {
    /// Its path in `network_dir` (`DATADIR/<network>`).
    pub fn path_in(network_dir: &Path) -> PathBuf {
        network_dir.join(FILE_NAME)
    }

    /// Writes it to `network_dir` atomically and privately; returns the path.
    pub fn write(&self, network_dir: &Path) -> std::io::Result<PathBuf> {
        let path = NodeFile::path_in(network_dir);
        let text = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        meshd_actors::persist::write_atomic(&path, &text)?;
        Ok(path)
    }

    /// The file in `network_dir`, if there is one of a format we read whose node still
    /// holds the data dir's lock (a pid alone may have been reused since a kill -9).
    pub fn read_live(network_dir: &Path) -> Option<NodeFile> {
        let text = std::fs::read(NodeFile::path_in(network_dir)).ok()?;
        let file: NodeFile = serde_json::from_slice(&text).ok()?;
        (file.format <= FORMAT && lock_held_by(network_dir, file.pid)).then_some(file)
    }

    /// The networks under `datadir` with a live node file, by name.
    pub fn live_networks(datadir: &Path) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(datadir) else {
            return Vec::new();
        };
        let mut names: Vec<String> = entries
            .flatten()
            .filter(|e| e.path().is_dir())
            .filter_map(|e| NodeFile::read_live(&e.path()).map(|f| f.network))
            .collect();
        names.sort();
        names
    }
}

/// Whether process `pid` holds the node's lock on `network_dir/.lock` (the node takes it
/// with flock(2) for its whole life). Read from /proc/locks, so asking takes no lock: a
/// client polling while a node starts can never make it find its data dir "in use".
pub fn lock_held_by(network_dir: &Path, pid: u32) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::metadata(network_dir.join(".lock")) else {
        return false;
    };
    let Ok(locks) = std::fs::read_to_string("/proc/locks") else {
        return false;
    };
    let (want_pid, want_inode) = (pid.to_string(), meta.ino().to_string());
    // "1: FLOCK  ADVISORY  WRITE 28577 fe:00:10010716 0 EOF": pid, then MAJ:MIN:INODE.
    locks.lines().any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields.get(1) == Some(&"FLOCK")
            && fields.get(4) == Some(&want_pid.as_str())
            && fields
                .get(5)
                .and_then(|f| f.rsplit(':').next())
                .is_some_and(|inode| inode == want_inode)
    })
}

/// The default data directory: `$XDG_DATA_HOME/meshd` when that is set (and absolute),
/// else `~/.meshd`; relative to the working directory only when neither is known.
pub fn default_datadir() -> PathBuf {
    let env_dir = |key: &str| {
        std::env::var_os(key)
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
    };
    if let Some(xdg) = env_dir("XDG_DATA_HOME") {
        return xdg.join("meshd");
    }
    if let Some(home) = env_dir("HOME") {
        return home.join(".meshd");
    }
    std::path::absolute(".meshd").unwrap_or_else(|_| PathBuf::from(".meshd"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_round_trips_and_a_dead_pid_reads_as_no_node() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = NodeFile {
            format: FORMAT,
            version: "0.1.0".into(),
            pid: std::process::id(),
            network: "regtest".into(),
            datadir: dir.path().into(),
            api: Some("127.0.0.1:18445".into()),
            rpc: None,
            metrics: None,
            p2p: vec!["127.0.0.1:18444".into()],
            start_time: 1_796_083_200,
        };
        // The node's lock, held as the node holds it (flock, exclusive).
        let lock = std::fs::File::create(dir.path().join(".lock")).unwrap();
        lock.try_lock().unwrap();
        let path = f.write(dir.path()).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(NodeFile::read_live(dir.path()), Some(f.clone()));
        // A pid no process has (above Linux's pid_max).
        f.pid = u32::MAX;
        f.write(dir.path()).unwrap();
        assert_eq!(NodeFile::read_live(dir.path()), None);
        f.pid = std::process::id();
        f.format = FORMAT + 1;
        f.write(dir.path()).unwrap();
        assert_eq!(NodeFile::read_live(dir.path()), None, "a newer format");
        // A live pid without the lock (reused after a kill -9): no node.
        f.format = FORMAT;
        f.write(dir.path()).unwrap();
        assert!(NodeFile::read_live(dir.path()).is_some());
        drop(lock);
        assert_eq!(NodeFile::read_live(dir.path()), None, "the lock is gone");
    }
}
