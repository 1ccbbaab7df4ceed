//! Fuzzes the SOCKS5 client exchange (`connection::proxy::handshake`, over the tokio-socks
//! crate) with arbitrary proxy replies: no reply may panic or hang; each ends in a stream
//! or a typed `ProxyError`. The first byte picks the target (IP or onion name) and whether
//! credentials are offered; the rest is what the proxy sends.
#![no_main]

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use libfuzzer_sys::fuzz_target;
use meshd_actors::connection::proxy::{handshake, ProxyTarget};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A proxy that answers with the fuzz input (in pieces of up to 7 bytes, so every split
/// of a reply is tried), then end of file; it accepts whatever is written.
struct Scripted<'a> {
    input: &'a [u8],
}

impl AsyncRead for Scripted<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let n = self.input.len().min(buf.remaining()).min(7);
        buf.put_slice(&self.input[..n]);
        self.input = &self.input[n..];
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Scripted<'_> {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(b.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

thread_local! {
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, reply)) = data.split_first() else {
        return;
    };
    let target = if mode & 1 == 0 {
        ProxyTarget::Ip("203.0.113.1:8333".parse().unwrap())
    } else {
        ProxyTarget::Name(
            "2gzyxa5ihm7nsggfxnu52rck2vv4rvmdlkiu3zzui5du4xyclen53wid.onion".into(),
            8333,
        )
    };
    let credentials = (mode & 2 != 0).then_some(("user", "password"));
    RUNTIME.with(|rt| {
        let _ = rt.block_on(handshake(Scripted { input: reply }, &target, credentials));
    });
});
