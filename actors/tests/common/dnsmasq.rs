//! A real DNS server for discovery tests: dnsmasq on a loopback port, authoritative for a
//! few test names from a hosts file, never forwarding anywhere.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running dnsmasq, killed on drop.
pub struct Dnsmasq {
    child: Child,
    /// Where it answers (UDP and TCP).
    pub addr: SocketAddr,
    _dir: tempfile::TempDir,
}

/// Where dnsmasq is, if installed.
pub fn dnsmasq_path() -> Option<PathBuf> {
    ["/usr/sbin/dnsmasq", "/usr/bin/dnsmasq", "/sbin/dnsmasq"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

impl Dnsmasq {
    /// Starts dnsmasq answering `records` (name → addresses); `None` if not installed.
    pub fn start(records: &[(&str, Vec<IpAddr>)]) -> Option<Dnsmasq> {
        let bin = dnsmasq_path()?;
        let dir = tempfile::tempdir().expect("tempdir");
        let hosts = dir.path().join("seeds.hosts");
        let mut text = String::new();
        for (name, ips) in records {
            for ip in ips {
                text.push_str(&format!("{ip} {name}\n"));
            }
        }
        std::fs::write(&hosts, text).expect("hosts file");
        // A free UDP port on loopback (dnsmasq takes TCP on the same port).
        let port = UdpSocket::bind("127.0.0.1:0")
            .and_then(|s| s.local_addr())
            .expect("port")
            .port();
        let child = Command::new(bin)
            .args([
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                "--no-poll",
                "--bind-interfaces",
                "--listen-address=127.0.0.1",
                "--cache-size=0",
                "--local=/test/",
                "--domain-needed",
                "--user=root",
            ])
            .arg(format!("--port={port}"))
            .arg(format!("--addn-hosts={}", hosts.display()))
            .arg(format!("--pid-file={}", dir.path().join("pid").display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start dnsmasq");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        // Wait until it answers on TCP (it binds UDP and TCP together).
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err() {
            assert!(Instant::now() < deadline, "dnsmasq did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(Dnsmasq {
            child,
            addr,
            _dir: dir,
        })
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
