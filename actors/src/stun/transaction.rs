//! One STUN binding transaction as a sans-IO state machine: when to (re)send and when to give
//! up, on RFC 5389's schedule (RTO doubling from 500 ms, up to 7 sends, a final wait of
//! 16 × RTO), cut short by a total timeout. A datagram completes the transaction only if it
//! comes from the server we asked (or, for a CHANGE-REQUEST, from the address we expect) and
//! carries our transaction id.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::codec::{binding_request, decode_response, BindingResponse, StunError};

/// Initial retransmission timeout (RFC 5389 §7.2.1).
pub const INITIAL_RTO: Duration = Duration::from_millis(500);
/// Requests sent at most (RFC 5389 `Rc`).
pub const MAX_SENDS: u32 = 7;
/// Final wait after the last send, in RTOs (RFC 5389 `Rm`).
pub const FINAL_WAIT_RTOS: u32 = 16;

/// What the driver must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxStep {
    /// Send these bytes to `to`, then come back at `until` (or when a datagram arrives).
    Send {
        /// Destination.
        to: SocketAddr,
        /// The request.
        bytes: Vec<u8>,
        /// Next deadline.
        until: Instant,
    },
    /// Nothing to send; come back at `until`.
    Wait(Instant),
    /// No answer in time.
    TimedOut,
}

/// A binding transaction.
#[derive(Debug, Clone)]
pub struct Transaction {
    tid: [u8; 12],
    server: SocketAddr,
    accept_from: Vec<SocketAddr>,
    request: Vec<u8>,
    sends: u32,
    rto: Duration,
    next: Instant,
    deadline: Instant,
}

impl Transaction {
    /// A transaction to `server`; `change` is a CHANGE-REQUEST (ip, port). Responses are
    /// accepted from `server`, or from `expect_from` when a CHANGE-REQUEST redirects them.
    pub fn new(
        tid: [u8; 12],
        server: SocketAddr,
        change: Option<(bool, bool)>,
        expect_from: Option<SocketAddr>,
        now: Instant,
        total_timeout: Duration,
    ) -> Transaction {
        Transaction {
            tid,
            server,
            accept_from: expect_from
                .into_iter()
                .chain(std::iter::once(server))
                .collect(),
            request: binding_request(tid, change),
            sends: 0,
            rto: INITIAL_RTO,
            next: now,
            deadline: now + total_timeout,
        }
    }

    /// The next step at `now`.
    pub fn poll(&mut self, now: Instant) -> TxStep {
        if now >= self.deadline {
            return TxStep::TimedOut;
        }
        if now < self.next {
            return TxStep::Wait(self.next.min(self.deadline));
        }
        if self.sends >= MAX_SENDS {
            return TxStep::TimedOut;
        }
        self.sends += 1;
        let wait = if self.sends == MAX_SENDS {
            INITIAL_RTO * FINAL_WAIT_RTOS
        } else {
            self.rto
        };
        self.rto *= 2;
        self.next = now + wait;
        TxStep::Send {
            to: self.server,
            bytes: self.request.clone(),
            until: self.next.min(self.deadline),
        }
    }

    /// Feeds a datagram from `from`: `Some(Ok)` completes the transaction; datagrams from
    /// other sources or for other transactions give `None` (ignored).
    pub fn on_datagram(
        &self,
        from: SocketAddr,
        bytes: &[u8],
    ) -> Option<Result<BindingResponse, StunError>> {
        if !self.accept_from.contains(&from) {
            return None;
        }
        match decode_response(bytes, self.tid) {
            Err(StunError::WrongTransaction) => None,
            other => Some(other),
        }
    }

    /// Requests sent so far.
    pub fn sends(&self) -> u32 {
        self.sends
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stun::codec::binding_response;

    fn server() -> SocketAddr {
        "203.0.113.1:3478".parse().unwrap()
    }

    #[test]
    fn retransmits_on_the_rfc_schedule_within_the_total_timeout() {
        let t0 = Instant::now();
        let mut tx = Transaction::new([1; 12], server(), None, None, t0, Duration::from_secs(60));
        let mut now = t0;
        let mut send_times = Vec::new();
        loop {
            match tx.poll(now) {
                TxStep::Send { until, .. } => {
                    send_times.push(now.duration_since(t0).as_millis());
                    now = until;
                }
                TxStep::Wait(until) => now = until,
                TxStep::TimedOut => break,
            }
        }
        assert_eq!(send_times, [0, 500, 1500, 3500, 7500, 15500, 31500]);
        assert_eq!(now.duration_since(t0).as_millis(), 39500);
    }

    #[test]
    fn total_timeout_cuts_the_schedule_short() {
        let t0 = Instant::now();
        let mut tx = Transaction::new([1; 12], server(), None, None, t0, Duration::from_secs(3));
        let mut now = t0;
        let mut sends = 0;
        loop {
            match tx.poll(now) {
                TxStep::Send { until, .. } => {
                    sends += 1;
                    now = until;
                }
                TxStep::Wait(until) => now = until,
                TxStep::TimedOut => break,
            }
        }
        assert_eq!(
            sends, 3,
            "0, 0.5 and 1.5 s; the 3.5 s send is past the timeout"
        );
        assert_eq!(now.duration_since(t0), Duration::from_secs(3));
    }

    #[test]
    fn only_the_asked_server_and_our_transaction_count() {
        let t0 = Instant::now();
        let tid = [9; 12];
        let tx = Transaction::new(tid, server(), None, None, t0, Duration::from_secs(3));
        let mapped: SocketAddr = "198.51.100.10:5000".parse().unwrap();
        let good = binding_response(tid, mapped, None, true);
        let forged = binding_response([8; 12], mapped, None, true);
        assert!(
            tx.on_datagram("203.0.113.9:3478".parse().unwrap(), &good)
                .is_none(),
            "wrong source"
        );
        assert!(
            tx.on_datagram(server(), &forged).is_none(),
            "wrong transaction id"
        );
        assert_eq!(
            tx.on_datagram(server(), &good).unwrap().unwrap().mapped,
            mapped
        );
    }
}
