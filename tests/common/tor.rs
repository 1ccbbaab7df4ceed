//! An offline `tor` for tests (`DisableNetwork 1`: no circuit is built and nothing leaves
//! the machine, but the control port still creates onion services), with a control port
//! that takes its cookie (SAFECOOKIE) and [`PASSWORD`]. Shared by both test crates.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The control port's password.
pub const PASSWORD: &str = "meshd-test-password";

/// The tor binary, or a skip (a failure in CI).
pub fn tor_path() -> Option<PathBuf> {
    let found = ["/usr/bin/tor", "/usr/sbin/tor", "/usr/local/bin/tor"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists());
    if found.is_none() {
        super::skip::skip_or_fail("tor (Debian package tor), started offline for the control port");
    }
    found
}

/// A running offline tor; killed when dropped.
pub struct Tor {
    child: Child,
    /// Its control port.
    pub control: SocketAddr,
    log: PathBuf,
}

impl Tor {
    /// Starts tor with its state in `dir`; waits until the control port answers.
    pub fn start(tor: &Path, dir: &Path) -> Tor {
        Tor::start_with(tor, dir, true)
    }

    /// As [`Tor::start`]; without `cookie` the control port takes [`PASSWORD`] only.
    pub fn start_with(tor: &Path, dir: &Path, cookie: bool) -> Tor {
        let hashed = Command::new(tor)
            .args(["--quiet", "--hash-password", PASSWORD])
            .output()
            .expect("tor --hash-password");
        let hashed = String::from_utf8_lossy(&hashed.stdout)
            .lines()
            .last()
            .unwrap_or_default()
            .trim()
            .to_string();
        assert!(hashed.starts_with("16:"), "hashed password: {hashed:?}");
        let data = dir.join("tor-data");
        std::fs::create_dir_all(&data).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let log = dir.join("tor.log");
        let torrc = dir.join("torrc");
        std::fs::write(
            &torrc,
            format!(
                "DataDirectory {data}\nControlPort 127.0.0.1:{port}\nCookieAuthentication {cookie}\n\
                 HashedControlPassword {hashed}\nDisableNetwork 1\nSocksPort 0\n\
                 Log notice file {log}\nAvoidDiskWrites 1\n",
                data = data.display(),
                log = log.display(),
                cookie = u8::from(cookie),
            ),
        )
        .unwrap();
        let child = Command::new(tor)
            .arg("-f")
            .arg(&torrc)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tor");
        let control = SocketAddr::from(([127, 0, 0, 1], port));
        let tor = Tor {
            child,
            control,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(control).is_err() {
            assert!(
                Instant::now() < deadline,
                "tor's control port never opened: {}",
                tor.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        tor
    }

    /// Tor's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Tor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
