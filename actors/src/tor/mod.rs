//! The TorControl actor: an onion service for inbound peers, made through Tor's control
//! port (`--torcontrol`, `--listenonion`), as Bitcoin Core's torcontrol makes it.
//!
//! It connects to the control port, authenticates (see [`control`]), and asks for an onion
//! service whose virtual port (the network's default port) leads to a loopback listener of
//! its own (bound at start, as Core's `-bind=...=onion`), so peers arriving through Tor are
//! known as onion peers rather than local ones. The service's private key is kept in `DATADIR/onion_v3_private_key` (Core's
//! file name and format, mode 0600, written atomically), so the onion address survives
//! restarts. While the service is up, its address is advertised to peers that asked for
//! addrv2 and shown in `/v1/network` and `meshd network`; the control connection is held
//! open (an `ADD_ONION` service lives as long as it) and the service is removed with
//! `DEL_ONION` at shutdown. A lost control connection is retried with backoff.

pub mod control;

pub use crate::shared::status::OnionService;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tracing::{debug, info, warn};

use crate::context::NodeContext;
use crate::shared::overlay::OverlayAddr;
use control::{AuthPlan, ControlError, Reply, ReplyReader};

/// File holding the onion service's private key (Bitcoin Core's name and format).
pub const ONION_KEY_FILE: &str = "onion_v3_private_key";
/// Tor's default control port, tried when `--torcontrol` is not given (not on regtest).
pub const DEFAULT_TOR_CONTROL: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9051);
/// Time allowed to connect to the control port and for each reply.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(10);
/// First wait before reconnecting to the control port...
const RETRY_MIN: Duration = Duration::from_secs(1);
/// ...doubling up to this (Core: 600 s): Tor may be restarted or started after us.
const RETRY_MAX: Duration = Duration::from_secs(600);
/// Time the shutdown waits for `DEL_ONION`'s answer.
const DEL_ONION_TIMEOUT: Duration = Duration::from_secs(2);

/// The control port to use: `--torcontrol`, else Tor's default except on regtest.
pub fn control_port(ctx: &NodeContext) -> Option<SocketAddr> {
    let config = ctx.config();
    if !wants_onion_service(&config, &ctx.listen_addrs) {
        return None;
    }
    Some(config.tor_control.unwrap_or(DEFAULT_TOR_CONTROL))
}

/// Whether an onion service may be made: `--listenonion`, a listening node, and a control
/// port given (or Tor's default, except on regtest).
pub fn wants_onion_service(config: &crate::config::NodeConfig, listen: &[SocketAddr]) -> bool {
    config.listen_onion
        && !listen.is_empty()
        && (config.tor_control.is_some() || !config.network.profile().is_regtest())
}

/// Where Tor should deliver the service's connections: our first listening address, with
/// an unspecified address replaced by loopback.
fn service_target(listen: SocketAddr) -> SocketAddr {
    match listen.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), listen.port())
        }
        IpAddr::V6(v6) if v6.is_unspecified() => {
            SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), listen.port())
        }
        _ => listen,
    }
}

/// Messages of the TorControl actor.
pub enum TorMsg {
    /// (Re)connect to the control port.
    Connect,
    /// The session ended (`Ok` after a requested stop); `was_up`: the service was made.
    SessionEnded {
        /// How it ended.
        result: Result<(), ControlError>,
        /// Whether the onion service was up during it.
        was_up: bool,
    },
}

/// The TorControl actor.
pub struct TorControl;

/// Its state.
pub struct TorState {
    ctx: Arc<NodeContext>,
    control: SocketAddr,
    /// Asks the running session to remove the service and end; it answers when done.
    stop: Option<oneshot::Sender<oneshot::Sender<()>>>,
    retry: Duration,
    /// The control port worked once: later failures are warnings, not debug lines.
    ever_up: bool,
}

impl Actor for TorControl {
    type Msg = TorMsg;
    type State = TorState;
    type Arguments = (Arc<NodeContext>, SocketAddr);

    async fn pre_start(
        &self,
        _myself: ActorRef<TorMsg>,
        (ctx, control): (Arc<NodeContext>, SocketAddr),
    ) -> Result<TorState, ActorProcessingErr> {
        metrics::gauge!("meshd_onion_service_up").set(0.0);
        Ok(TorState {
            ctx,
            control,
            stop: None,
            retry: RETRY_MIN,
            ever_up: false,
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<TorMsg>,
        _state: &mut TorState,
    ) -> Result<(), ActorProcessingErr> {
        let _ = myself.cast(TorMsg::Connect);
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<TorMsg>,
        msg: TorMsg,
        state: &mut TorState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            TorMsg::Connect => {
                if state.stop.is_some() || state.ctx.is_shutting_down() {
                    return Ok(());
                }
                let (tx, rx) = oneshot::channel();
                state.stop = Some(tx);
                let (ctx, control, me) = (state.ctx.clone(), state.control, myself.clone());
                tokio::spawn(async move {
                    let result = session(&ctx, control, rx).await;
                    let was_up = ctx.onion_service().is_some();
                    ctx.set_onion_service(None);
                    metrics::gauge!("meshd_onion_service_up").set(0.0);
                    let _ = me.cast(TorMsg::SessionEnded { result, was_up });
                });
            }
            TorMsg::SessionEnded { result, was_up } => {
                state.stop = None;
                if was_up {
                    state.ever_up = true;
                    state.retry = RETRY_MIN;
                }
                if let Err(e) = result {
                    metrics::counter!("meshd_tor_control_errors_total", "kind" => e.kind())
                        .increment(1);
                    let explicit = state.ctx.config().tor_control.is_some();
                    if explicit || state.ever_up {
                        warn!(control = %state.control, error = %e, retry_in = ?state.retry, "Tor control port: no onion service");
                    } else {
                        debug!(control = %state.control, error = %e, "no Tor control port answering");
                    }
                }
                if !state.ctx.is_shutting_down() {
                    myself.send_after(state.retry, || TorMsg::Connect);
                    state.retry = (state.retry * 2).min(RETRY_MAX);
                }
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<TorMsg>,
        state: &mut TorState,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(stop) = state.stop.take() {
            let (done_tx, done_rx) = oneshot::channel();
            if stop.send(done_tx).is_ok() {
                let _ = tokio::time::timeout(DEL_ONION_TIMEOUT * 2, done_rx).await;
            }
        }
        Ok(())
    }
}

/// The control connection: a socket and the reply reader.
struct ControlConn {
    stream: TcpStream,
    replies: ReplyReader,
}

impl ControlConn {
    async fn command(&mut self, line: &str, name: &'static str) -> Result<Reply, ControlError> {
        self.stream
            .write_all(line.as_bytes())
            .await
            .map_err(|e| ControlError::Io(e.to_string()))?;
        tokio::time::timeout(CONTROL_TIMEOUT, self.reply())
            .await
            .map_err(|_| ControlError::Io(format!("no answer to {name}")))?
            .and_then(|r| r.ok_or_refused(name))
    }

    /// The next reply that is not an asynchronous event.
    async fn reply(&mut self) -> Result<Reply, ControlError> {
        let mut buf = [0u8; 4096];
        loop {
            if let Some(r) = self.replies.next_reply()? {
                if r.status == 650 {
                    continue;
                }
                return Ok(r);
            }
            let n = self
                .stream
                .read(&mut buf)
                .await
                .map_err(|e| ControlError::Io(e.to_string()))?;
            if n == 0 {
                return Err(ControlError::Io("closed by Tor".into()));
            }
            self.replies.feed(&buf[..n]);
        }
    }
}

/// Reads the cookie file the server names. The path comes from the server, so: a regular
/// file (no symlink, FIFO or device: checked before it is opened, and again on the open
/// file), of exactly the cookie's size, read no further than one byte past it, and private
/// to its owner and group as Tor writes it (0600, or 0640 with CookieAuthFileGroupReadable):
/// a file anyone may read proves nothing of the server, which could have written it.
fn read_cookie(path: &str) -> Result<[u8; control::COOKIE_LEN], ControlError> {
    use std::io::Read;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let err = |why: String| ControlError::Cookie {
        path: path.to_string(),
        why,
    };
    let regular = |m: &std::fs::Metadata| -> Result<(), ControlError> {
        if !m.file_type().is_file() {
            return Err(err("not a regular file".into()));
        }
        if m.len() != control::COOKIE_LEN as u64 {
            return Err(err(format!("{} bytes", m.len())));
        }
        if m.mode() & 0o007 != 0 {
            return Err(err(format!(
                "readable or writable by anyone (mode {:o})",
                m.mode() & 0o777
            )));
        }
        Ok(())
    };
    let before = std::fs::symlink_metadata(path).map_err(|e| err(e.to_string()))?;
    regular(&before)?;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| err(e.to_string()))?;
    let meta = file.metadata().map_err(|e| err(e.to_string()))?;
    regular(&meta)?;
    if (meta.dev(), meta.ino()) != (before.dev(), before.ino()) {
        return Err(err("replaced while it was opened".into()));
    }
    let mut bytes = Vec::with_capacity(control::COOKIE_LEN + 1);
    file.take(control::COOKIE_LEN as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| err(e.to_string()))?;
    control::check_cookie(path, &bytes)
}

async fn authenticate(
    conn: &mut ControlConn,
    password: Option<&str>,
    allow_null: bool,
) -> Result<(), ControlError> {
    let info = conn.command("PROTOCOLINFO 1\r\n", "PROTOCOLINFO").await?;
    match control::choose_auth(&info, password, allow_null)? {
        AuthPlan::Null => conn.command("AUTHENTICATE\r\n", "AUTHENTICATE").await?,
        AuthPlan::Password(p) => {
            let line = format!("AUTHENTICATE {}\r\n", control::quote(&p));
            conn.command(&line, "AUTHENTICATE").await?
        }
        AuthPlan::SafeCookie(path, password) => {
            // Off the runtime's threads, bounded: the path may lead to a slow filesystem.
            let read = {
                let path = path.clone();
                tokio::time::timeout(
                    CONTROL_TIMEOUT,
                    tokio::task::spawn_blocking(move || read_cookie(&path)),
                )
                .await
            };
            let read = match read {
                Ok(Ok(r)) => r,
                Ok(Err(_)) | Err(_) => Err(ControlError::Cookie {
                    path: path.clone(),
                    why: "not read in time".into(),
                }),
            };
            let cookie = match (read, password) {
                (Ok(c), _) => c,
                // An unreadable cookie with a password configured: the password, as asked.
                (Err(e), Some(p)) => {
                    debug!(error = %e, "Tor cookie unreadable; authenticating with the password");
                    let line = format!("AUTHENTICATE {}\r\n", control::quote(&p));
                    conn.command(&line, "AUTHENTICATE").await?;
                    return Ok(());
                }
                (Err(e), None) => return Err(e),
            };
            let nonce: [u8; 32] = rand::random();
            let line = format!(
                "AUTHCHALLENGE SAFECOOKIE {}\r\n",
                control::hex_encode(&nonce)
            );
            let challenge = conn.command(&line, "AUTHCHALLENGE").await?;
            let proof = control::safecookie_response(&cookie, &nonce, &challenge)?;
            conn.command(&format!("AUTHENTICATE {proof}\r\n"), "AUTHENTICATE")
                .await?
        }
    };
    Ok(())
}

/// The key to use: the saved one, or a new one made here when there is none. A file that
/// holds no key we can use is set aside (`.corrupt-<time>`), never overwritten: it may be
/// the operator's onion identity in a form we do not read.
fn load_key(path: &Path) -> Result<(String, bool), ControlError> {
    match std::fs::read_to_string(path) {
        Ok(text) if control::valid_key(text.trim()) => return Ok((text.trim().to_string(), false)),
        Ok(_) => {
            let aside = crate::persist::set_aside(path).map_err(|e| ControlError::Cookie {
                path: path.display().to_string(),
                why: format!("not a key we can use, and it cannot be set aside: {e}"),
            })?;
            warn!(path = %path.display(), aside = %aside.display(), "onion key file is not an ED25519-V3 key we can use; set aside, a new key is made");
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(ControlError::Cookie {
                path: path.display().to_string(),
                why: format!("onion key unreadable: {e}"),
            })
        }
    }
    Ok((control::new_key(rand::random()), true))
}

/// Writes the key atomically (temp, fsync, rename), readable by us only.
fn save_key(path: &Path, key: &str) -> std::io::Result<()> {
    crate::persist::write_atomic(path, key.as_bytes())
}

/// One control session: authenticate, add the service, hold it until told to stop (then
/// remove it) or until the connection is lost.
async fn session(
    ctx: &NodeContext,
    control: SocketAddr,
    stop: oneshot::Receiver<oneshot::Sender<()>>,
) -> Result<(), ControlError> {
    let config = ctx.config();
    let stream = tokio::time::timeout(CONTROL_TIMEOUT, TcpStream::connect(control))
        .await
        .map_err(|_| ControlError::Io("connect timed out".into()))?
        .map_err(|e| ControlError::Io(e.to_string()))?;
    let mut conn = ControlConn {
        stream,
        replies: ReplyReader::new(),
    };
    authenticate(
        &mut conn,
        config.tor_password.as_deref(),
        config.tor_null_auth,
    )
    .await?;

    let Some(listen) = ctx.listen_addrs.first().copied() else {
        return Ok(());
    };
    // The onion listener when there is one (its peers are then known as onion peers).
    let target = ctx
        .onion_bind
        .get()
        .copied()
        .unwrap_or_else(|| service_target(listen));
    let port = ctx.profile.default_port;
    let key_path = config.datadir.join(ONION_KEY_FILE);
    let (key, made_here) = {
        let path = key_path.clone();
        tokio::task::spawn_blocking(move || load_key(&path))
            .await
            .map_err(|e| ControlError::Io(e.to_string()))??
    };
    let line = control::add_onion_command(&key, port, &target.to_string());
    let reply = conn.command(&line, "ADD_ONION").await?;
    let service_id = control::parse_add_onion(&reply)?;
    let addr = OverlayAddr::parse_host(&format!("{service_id}.onion"))
        .map_err(|e| ControlError::Malformed(format!("ServiceID {service_id}: {e}")))?;
    let OverlayAddr::Onion(service) = addr else {
        return Err(ControlError::Malformed(format!("ServiceID {service_id}")));
    };
    // Ending the session on a mismatch closes the control connection, and Tor removes a
    // service made on it: nothing of a server-chosen identity stays.
    control::check_add_onion(&key, &service)?;
    let saved = !made_here;
    if made_here {
        let (path, k) = (key_path.clone(), key.clone());
        let saved = tokio::task::spawn_blocking(move || save_key(&path, &k))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
        if let Err(e) = saved {
            // The service works; only its address will change at the next start.
            warn!(path = %key_path.display(), error = %e, "could not save the onion key");
        }
    }
    ctx.set_onion_service(Some(OnionService { addr, port, target }));
    metrics::gauge!("meshd_onion_service_up").set(1.0);
    info!(onion = %addr.display_with_port(port), %target, reused_key = saved, "onion service up");

    // Hold the service: read (and ignore) events until stopped or cut off.
    let mut stop = stop;
    let mut buf = [0u8; 4096];
    loop {
        tokio::select! {
            done = &mut stop => {
                let line = format!("DEL_ONION {service_id}\r\n");
                let removed = tokio::time::timeout(DEL_ONION_TIMEOUT, conn.command(&line, "DEL_ONION")).await;
                match removed {
                    Ok(Ok(_)) => info!(onion = %addr, "onion service removed"),
                    Ok(Err(e)) => warn!(onion = %addr, error = %e, "DEL_ONION failed"),
                    Err(_) => warn!(onion = %addr, "DEL_ONION unanswered"),
                }
                if let Ok(done) = done {
                    let _ = done.send(());
                }
                return Ok(());
            }
            read = conn.stream.read(&mut buf) => {
                match read {
                    Ok(0) => return Err(ControlError::Io("closed by Tor".into())),
                    Ok(n) => {
                        conn.replies.feed(&buf[..n]);
                        while conn.replies.next_reply()?.is_some() {}
                    }
                    Err(e) => return Err(ControlError::Io(e.to_string())),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_service_targets_a_specific_listening_address() {
        assert_eq!(
            service_target("0.0.0.0:8333".parse().unwrap()),
            "127.0.0.1:8333".parse().unwrap()
        );
        assert_eq!(
            service_target("[::]:8333".parse().unwrap()),
            "[::1]:8333".parse().unwrap()
        );
        assert_eq!(
            service_target("10.0.0.2:8333".parse().unwrap()),
            "10.0.0.2:8333".parse().unwrap()
        );
    }

    /// The cookie path comes from the server: only a private regular file of 32 bytes is
    /// read; a file anyone can read (which the server may have written), a symlink, a FIFO
    /// or a device is refused before it is read.
    #[test]
    fn only_a_private_regular_cookie_file_is_read() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let cookie = dir.path().join("control_auth_cookie");
        std::fs::write(&cookie, [7u8; 32]).unwrap();
        let set = |p: &std::path::Path, mode: u32| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap()
        };
        let path = cookie.to_str().unwrap();
        set(&cookie, 0o600);
        assert_eq!(read_cookie(path), Ok([7u8; 32]));
        set(&cookie, 0o640);
        assert!(
            read_cookie(path).is_ok(),
            "group-readable, as Tor may write it"
        );
        set(&cookie, 0o644);
        assert!(matches!(
            read_cookie(path),
            Err(ControlError::Cookie { .. })
        ));
        set(&cookie, 0o600);
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&cookie, &link).unwrap();
        assert!(read_cookie(link.to_str().unwrap()).is_err(), "a symlink");
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert!(read_cookie(fifo.to_str().unwrap()).is_err(), "a FIFO");
        assert!(read_cookie("/dev/zero").is_err(), "a device");
        std::fs::write(&cookie, [7u8; 33]).unwrap();
        assert!(read_cookie(path).is_err(), "33 bytes");
    }

    #[test]
    fn the_key_file_is_private_and_replaced_whole() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(ONION_KEY_FILE);
        let key = |seed: u8| control::new_key([seed; 32]);
        save_key(&path, &key(1)).unwrap();
        save_key(&path, &key(2)).unwrap();
        assert_eq!(load_key(&path), Ok((key(2), false)));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // A file we cannot use is set aside, never overwritten; a new key is made.
        std::fs::write(&path, "garbage").unwrap();
        let (fresh, made) = load_key(&path).unwrap();
        assert!(made && control::valid_key(&fresh));
        assert!(!path.exists());
        let aside: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains(".corrupt-"))
            .collect();
        assert_eq!(aside.len(), 1);
        assert_eq!(std::fs::read_to_string(aside[0].path()).unwrap(), "garbage");
    }
}
