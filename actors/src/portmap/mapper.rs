//! Keeping one TCP port mapped on the default gateway with PCP, falling back to NAT-PMP, as
//! Bitcoin Core's `ProcessPCP` does (mapport.cpp): sans-IO, driven with datagrams and time.
//!
//! - PCP first (RFC 6887): one MAP request, up to [`TRIES`] sends [`TRY_TIMEOUT`] apart. A
//!   gateway answering "unsupported version" (a NAT-PMP-only one) is asked with NAT-PMP
//!   (RFC 6886): its external address, then the mapping.
//! - The lifetime asked is [`REQUESTED_LIFETIME`]; the mapping is renewed at a uniformly
//!   random point between 1/2 and 5/8 of the lifetime granted (RFC 6887 §11.2.1, as Core),
//!   with the same nonce, so the gateway refreshes the same mapping.
//! - A round that gets no mapping is retried after [`RETRY_PERIOD`]; a mapping whose renewal
//!   fails is kept until it expires, then reported lost.
//! - At shutdown the mapping is deleted (lifetime 0), which Core does not do; the answer is
//!   not waited for long ([`TRY_TIMEOUT`] once).
//!
//! The caller owns the UDP socket (connected to the gateway's port 5351, so only the gateway's
//! datagrams arrive), the clock and the randomness (the nonce and the renewal point).

use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::wire::{self, NatPmpAnswer, Nonce, PcpAnswer, WireError};

/// The lifetime asked for: twice Core's reannounce period (`PORT_MAPPING_REANNOUNCE_PERIOD`,
/// 20 minutes), since renewal comes at about half of it.
pub const REQUESTED_LIFETIME: u32 = 2 * 20 * 60;
/// Wait after a round that got no mapping (Core's `PORT_MAPPING_RETRY_PERIOD`).
pub const RETRY_PERIOD: Duration = Duration::from_secs(5 * 60);
/// Sends of one request before the round gives up on that protocol (Core's `num_tries`).
pub const TRIES: u32 = 3;
/// Wait for an answer to one send (Core's `timeout_per_try`).
pub const TRY_TIMEOUT: Duration = Duration::from_secs(1);
/// A granted lifetime below this is refused as impossible (Core: "impossibly short mapping
/// lifetime"); renewing it would flood the gateway.
pub const MIN_LIFETIME: u32 = 30;

/// How a mapping was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// Port Control Protocol (RFC 6887).
    Pcp,
    /// NAT Port Mapping Protocol (RFC 6886).
    NatPmp,
    /// UPnP IGD (through the actor, not this core).
    Upnp,
}

impl Protocol {
    /// Its label in metrics, events and the API.
    pub fn label(&self) -> &'static str {
        match self {
            Protocol::Pcp => "pcp",
            Protocol::NatPmp => "natpmp",
            Protocol::Upnp => "upnp",
        }
    }
}

/// A mapping in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapping {
    /// How it was made.
    pub protocol: Protocol,
    /// The gateway's address and port that reach our listener.
    pub external: (IpAddr, u16),
    /// Seconds granted.
    pub lifetime: u32,
}

/// Why a round ended without a mapping.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MapError {
    /// No answer to any try.
    #[error("{0} gateway did not answer")]
    NoAnswer(&'static str),
    /// The gateway refused, with its result code's name.
    #[error("{protocol} gateway refused: {reason}")]
    Refused {
        /// `pcp` or `natpmp`.
        protocol: &'static str,
        /// The result code's name.
        reason: &'static str,
    },
    /// The gateway granted a lifetime below [`MIN_LIFETIME`].
    #[error("{0} gateway granted an impossibly short lifetime")]
    ShortLifetime(&'static str),
}

impl MapError {
    /// The protocol that failed.
    pub fn protocol(&self) -> Protocol {
        let label = match self {
            MapError::NoAnswer(p) | MapError::ShortLifetime(p) => p,
            MapError::Refused { protocol, .. } => protocol,
        };
        if *label == "natpmp" {
            Protocol::NatPmp
        } else {
            Protocol::Pcp
        }
    }

    /// A stable name for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            MapError::NoAnswer(_) => "no_answer",
            MapError::Refused { .. } => "refused",
            MapError::ShortLifetime(_) => "short_lifetime",
        }
    }
}

/// What the caller does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send this datagram to the gateway.
    Send(Vec<u8>),
    /// A mapping was made or renewed (`renewed`: it was in force already, unchanged).
    Mapped {
        /// The mapping.
        mapping: Mapping,
        /// Whether this renews the same mapping.
        renewed: bool,
    },
    /// A round failed; the next comes after [`RETRY_PERIOD`].
    Failed(MapError),
    /// The mapping expired without renewal: stop advertising it.
    Lost(Mapping),
    /// A datagram was not an answer we take (counted, dropped).
    Ignored(WireError),
}

/// What is awaited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Nothing sent yet.
    Idle,
    /// A PCP MAP answer.
    Pcp,
    /// NAT-PMP's external address.
    NatPmpExternal,
    /// NAT-PMP's mapping, the external address known.
    NatPmpMap(IpAddr),
    /// Between rounds: a mapping renewed at `renew_at`, or none and a retry then.
    Waiting,
    /// The delete was sent; nothing more.
    Stopped,
}

/// The mapper of one port on one gateway.
#[derive(Debug)]
pub struct PortMapper {
    client: IpAddr,
    port: u16,
    nonce: Nonce,
    step: Step,
    tries: u32,
    deadline: Option<Instant>,
    /// When the next round starts (renewal or retry).
    next_round: Option<Instant>,
    current: Option<(Mapping, Instant)>,
    /// How a renewal picks its point in [1/2, 5/8] of the lifetime: a fraction in [0, 1).
    jitter: f64,
}

impl PortMapper {
    /// A mapper for TCP `port` of `client` (our address toward the gateway); `nonce` is PCP's
    /// random tag, `jitter` (in [0, 1)) places renewals between 1/2 and 5/8 of the lifetime.
    pub fn new(client: IpAddr, port: u16, nonce: Nonce, jitter: f64) -> PortMapper {
        PortMapper {
            client,
            port,
            nonce,
            step: Step::Idle,
            tries: 0,
            deadline: None,
            next_round: None,
            current: None,
            jitter: jitter.clamp(0.0, 1.0),
        }
    }

    /// The mapping in force, if any.
    pub fn current(&self) -> Option<Mapping> {
        self.current.map(|(m, _)| m)
    }

    /// When [`Self::tick`] next has something to do.
    pub fn next_wake(&self) -> Option<Instant> {
        let expiry = self.current.map(|(_, e)| e);
        [self.deadline, self.next_round, expiry]
            .into_iter()
            .flatten()
            .min()
    }

    /// Starts the first round.
    pub fn start(&mut self, now: Instant) -> Vec<Output> {
        self.begin_round(now)
    }

    fn begin_round(&mut self, now: Instant) -> Vec<Output> {
        self.next_round = None;
        self.step = Step::Pcp;
        self.tries = 1;
        self.deadline = Some(now + TRY_TIMEOUT);
        vec![Output::Send(self.pcp_request(REQUESTED_LIFETIME))]
    }

    fn pcp_request(&self, lifetime: u32) -> Vec<u8> {
        wire::pcp_map_request(self.client, self.port, lifetime, &self.nonce)
    }

    fn resend(&self) -> Vec<u8> {
        match self.step {
            Step::NatPmpExternal => wire::natpmp_external_request(),
            Step::NatPmpMap(_) => wire::natpmp_map_request(self.port, REQUESTED_LIFETIME),
            _ => self.pcp_request(REQUESTED_LIFETIME),
        }
    }

    /// Time passed: resends, gives up on a protocol, renews, retries, or expires.
    pub fn tick(&mut self, now: Instant) -> Vec<Output> {
        let mut out = Vec::new();
        if let Some((m, expiry)) = self.current {
            if now >= expiry {
                self.current = None;
                out.push(Output::Lost(m));
            }
        }
        match self.step {
            Step::Pcp | Step::NatPmpExternal | Step::NatPmpMap(_)
                if self.deadline.is_some_and(|d| now >= d) =>
            {
                if self.tries < TRIES {
                    self.tries += 1;
                    self.deadline = Some(now + TRY_TIMEOUT);
                    out.push(Output::Send(self.resend()));
                } else {
                    let protocol = if self.step == Step::Pcp {
                        "pcp"
                    } else {
                        "natpmp"
                    };
                    out.extend(self.round_failed(now, MapError::NoAnswer(protocol)));
                }
            }
            Step::Waiting | Step::Idle if self.next_round.is_some_and(|t| now >= t) => {
                out.extend(self.begin_round(now));
            }
            _ => {}
        }
        out
    }

    fn round_failed(&mut self, now: Instant, why: MapError) -> Vec<Output> {
        self.step = Step::Waiting;
        self.deadline = None;
        let retry = now + RETRY_PERIOD;
        // A mapping still in force is renewed before it runs out, if the retry is late.
        self.next_round = Some(match self.current {
            Some((_, expiry)) if expiry > now => retry.min(now + (expiry - now) / 2),
            _ => retry,
        });
        vec![Output::Failed(why)]
    }

    fn mapped(&mut self, now: Instant, mapping: Mapping) -> Vec<Output> {
        if mapping.lifetime < MIN_LIFETIME {
            let protocol = mapping.protocol.label();
            return self.round_failed(now, MapError::ShortLifetime(protocol));
        }
        // The same mapping again: a gateway may answer the lifetime left, not the one asked.
        let renewed = self
            .current
            .is_some_and(|(m, _)| m.protocol == mapping.protocol && m.external == mapping.external);
        let granted = Duration::from_secs(u64::from(mapping.lifetime));
        // Renewed on the schedule of what we asked at most (Core: min of the two), so a
        // gateway granting years does not leave the mapping unchecked for years.
        let schedule = granted.min(Duration::from_secs(u64::from(REQUESTED_LIFETIME)));
        let renew_in = schedule / 2 + (schedule / 8).mul_f64(self.jitter);
        let expiry = now.checked_add(granted).unwrap_or(now + schedule);
        self.current = Some((mapping, expiry));
        self.step = Step::Waiting;
        self.deadline = None;
        self.next_round = Some(now + renew_in);
        vec![Output::Mapped { mapping, renewed }]
    }

    /// A datagram from the gateway.
    pub fn on_datagram(&mut self, now: Instant, bytes: &[u8]) -> Vec<Output> {
        match self.step {
            Step::Pcp => match wire::parse_pcp_answer(bytes, &self.nonce, self.port) {
                Ok(PcpAnswer::Mapped {
                    external, lifetime, ..
                }) => self.mapped(
                    now,
                    Mapping {
                        protocol: Protocol::Pcp,
                        external,
                        lifetime,
                    },
                ),
                Ok(PcpAnswer::UnsupportedVersion) => {
                    // Core: "Got unsupported PCP version response, falling back to NAT-PMP".
                    self.step = Step::NatPmpExternal;
                    self.tries = 1;
                    self.deadline = Some(now + TRY_TIMEOUT);
                    vec![Output::Send(wire::natpmp_external_request())]
                }
                Ok(PcpAnswer::Refused(code)) => self.round_failed(
                    now,
                    MapError::Refused {
                        protocol: "pcp",
                        reason: wire::pcp_result_name(code),
                    },
                ),
                Err(e) => vec![Output::Ignored(e)],
            },
            Step::NatPmpExternal | Step::NatPmpMap(_) => {
                match wire::parse_natpmp_answer(bytes, self.port) {
                    Ok(NatPmpAnswer::External { ip, .. }) if self.step == Step::NatPmpExternal => {
                        self.step = Step::NatPmpMap(IpAddr::V4(ip));
                        self.tries = 1;
                        self.deadline = Some(now + TRY_TIMEOUT);
                        vec![Output::Send(wire::natpmp_map_request(
                            self.port,
                            REQUESTED_LIFETIME,
                        ))]
                    }
                    Ok(NatPmpAnswer::Mapped {
                        external_port,
                        lifetime,
                        ..
                    }) => match self.step {
                        Step::NatPmpMap(ip) => self.mapped(
                            now,
                            Mapping {
                                protocol: Protocol::NatPmp,
                                external: (ip, external_port),
                                lifetime,
                            },
                        ),
                        _ => vec![Output::Ignored(WireError::Opcode(130))],
                    },
                    Ok(NatPmpAnswer::Refused(code)) => self.round_failed(
                        now,
                        MapError::Refused {
                            protocol: "natpmp",
                            reason: wire::natpmp_result_name(code),
                        },
                    ),
                    Ok(NatPmpAnswer::External { .. }) => {
                        vec![Output::Ignored(WireError::Opcode(128))]
                    }
                    Err(e) => vec![Output::Ignored(e)],
                }
            }
            // Late or unasked: nothing awaited.
            _ => vec![Output::Ignored(WireError::NotOurs)],
        }
    }

    /// Shutdown: the mapping in force is deleted (lifetime 0) with the protocol that made
    /// it; nothing more is sent after.
    pub fn stop(&mut self) -> Vec<Output> {
        let out = match self.current.take() {
            Some((m, _)) if m.protocol == Protocol::Pcp => vec![Output::Send(self.pcp_request(0))],
            Some((m, _)) if m.protocol == Protocol::NatPmp => {
                vec![Output::Send(wire::natpmp_map_request(self.port, 0))]
            }
            _ => Vec::new(),
        };
        self.step = Step::Stopped;
        self.deadline = None;
        self.next_round = None;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const PORT: u16 = 8333;
    const NONCE: Nonce = [3; wire::NONCE_LEN];

    fn client() -> IpAddr {
        "10.0.0.10".parse().unwrap()
    }
    fn public() -> IpAddr {
        "203.0.113.254".parse().unwrap()
    }

    fn pcp_ok(lifetime: u32) -> Vec<u8> {
        let mut b = vec![2, 0x81, 0, 0];
        b.extend_from_slice(&lifetime.to_be_bytes());
        b.extend_from_slice(&[0; 16]);
        b.extend_from_slice(&NONCE);
        b.extend_from_slice(&[6, 0, 0, 0]);
        b.extend_from_slice(&PORT.to_be_bytes());
        b.extend_from_slice(&PORT.to_be_bytes());
        b.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 203, 0, 113, 254]);
        b
    }

    fn sent(out: &[Output]) -> Vec<Vec<u8>> {
        out.iter()
            .filter_map(|o| match o {
                Output::Send(b) => Some(b.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn pcp_maps_renews_at_half_to_five_eighths_and_deletes_at_stop() {
        let t0 = Instant::now();
        let mut m = PortMapper::new(client(), PORT, NONCE, 0.0);
        let out = m.start(t0);
        assert_eq!(sent(&out)[0][..2], [2, 1], "a PCP MAP first");
        let out = m.on_datagram(t0, &pcp_ok(2400));
        let mapping = Mapping {
            protocol: Protocol::Pcp,
            external: (public(), PORT),
            lifetime: 2400,
        };
        assert_eq!(
            out,
            vec![Output::Mapped {
                mapping,
                renewed: false
            }]
        );
        assert_eq!(m.next_wake(), Some(t0 + Duration::from_secs(1200)));
        assert!(m.tick(t0 + Duration::from_secs(1199)).is_empty());
        let renew = m.tick(t0 + Duration::from_secs(1200));
        assert_eq!(sent(&renew).len(), 1, "renewed at half the lifetime");
        assert_eq!(sent(&renew)[0][24..36], NONCE, "with the same nonce");
        let t1 = t0 + Duration::from_secs(1200);
        assert_eq!(
            m.on_datagram(t1, &pcp_ok(2400)),
            vec![Output::Mapped {
                mapping,
                renewed: true
            }]
        );
        let stop = m.stop();
        let del = &sent(&stop)[0];
        assert_eq!(&del[4..8], &[0, 0, 0, 0], "lifetime 0 deletes");
        assert!(m.tick(t1 + Duration::from_secs(10_000)).is_empty());

        // The latest renewal point: 5/8 of the lifetime.
        let mut late = PortMapper::new(client(), PORT, NONCE, 0.999_999);
        let _ = late.start(t0);
        let _ = late.on_datagram(t0, &pcp_ok(2400));
        let wake = late.next_wake().unwrap() - t0;
        assert!(wake > Duration::from_secs(1499) && wake <= Duration::from_secs(1500));
    }

    #[test]
    fn a_natpmp_gateway_is_asked_after_pcps_unsupported_version() {
        let t0 = Instant::now();
        let mut m = PortMapper::new(client(), PORT, NONCE, 0.0);
        let _ = m.start(t0);
        let out = m.on_datagram(t0, &[0, 0x81, 0, 1, 0, 0, 0, 1]);
        assert_eq!(sent(&out), vec![vec![0, 0]], "NAT-PMP's external address");
        let out = m.on_datagram(t0, &[0, 128, 0, 0, 0, 0, 0, 1, 203, 0, 113, 254]);
        assert_eq!(sent(&out), vec![wire::natpmp_map_request(PORT, 2400)]);
        let answer = [
            0, 130, 0, 0, 0, 0, 0, 1, 0x20, 0x8d, 0x20, 0x8d, 0, 0, 0x09, 0x60,
        ];
        let out = m.on_datagram(t0, &answer);
        assert_eq!(
            out,
            vec![Output::Mapped {
                mapping: Mapping {
                    protocol: Protocol::NatPmp,
                    external: (public(), PORT),
                    lifetime: 2400
                },
                renewed: false
            }]
        );
        assert_eq!(sent(&m.stop()), vec![wire::natpmp_map_request(PORT, 0)]);
    }

    #[test]
    fn no_answer_is_retried_three_times_then_after_the_retry_period() {
        let t0 = Instant::now();
        let mut m = PortMapper::new(client(), PORT, NONCE, 0.0);
        assert_eq!(sent(&m.start(t0)).len(), 1);
        let mut t = t0;
        for _ in 1..TRIES {
            t += TRY_TIMEOUT;
            assert_eq!(sent(&m.tick(t)).len(), 1, "resent");
        }
        t += TRY_TIMEOUT;
        let out = m.tick(t);
        assert_eq!(out, vec![Output::Failed(MapError::NoAnswer("pcp"))]);
        assert_eq!(m.next_wake(), Some(t + RETRY_PERIOD));
        assert!(sent(&m.tick(t + RETRY_PERIOD - Duration::from_secs(1))).is_empty());
        assert_eq!(sent(&m.tick(t + RETRY_PERIOD)).len(), 1, "a new round");
        assert!(m.stop().is_empty(), "nothing to delete");
    }

    #[test]
    fn a_mapping_whose_renewals_fail_is_lost_when_it_expires() {
        let t0 = Instant::now();
        let mut m = PortMapper::new(client(), PORT, NONCE, 0.0);
        let _ = m.start(t0);
        let _ = m.on_datagram(t0, &pcp_ok(600));
        let mut t = t0;
        let mut lost = false;
        for _ in 0..100 {
            let Some(w) = m.next_wake() else { break };
            t = w;
            if m.tick(t).iter().any(|o| matches!(o, Output::Lost(_))) {
                lost = true;
                break;
            }
        }
        assert!(lost, "reported lost");
        assert_eq!(
            t,
            t0 + Duration::from_secs(600),
            "at its expiry, not before"
        );
        assert_eq!(m.current(), None);
    }

    #[test]
    fn refusals_short_lifetimes_and_strangers_make_no_mapping() {
        let t0 = Instant::now();
        let mut m = PortMapper::new(client(), PORT, NONCE, 0.0);
        let _ = m.start(t0);
        let mut refused = pcp_ok(0);
        refused[3] = 8;
        assert_eq!(
            m.on_datagram(t0, &refused),
            vec![Output::Failed(MapError::Refused {
                protocol: "pcp",
                reason: "no_resources"
            })]
        );
        let mut m = PortMapper::new(client(), PORT, NONCE, 0.0);
        let _ = m.start(t0);
        assert_eq!(
            m.on_datagram(t0, &pcp_ok(10)),
            vec![Output::Failed(MapError::ShortLifetime("pcp"))]
        );
        let mut m = PortMapper::new(client(), PORT, NONCE, 0.0);
        let _ = m.start(t0);
        let mut other = pcp_ok(2400);
        other[24] ^= 1;
        assert_eq!(
            m.on_datagram(t0, &other),
            vec![Output::Ignored(WireError::NotOurs)]
        );
        assert_eq!(m.current(), None);
    }

    proptest! {
        /// Any datagrams at any times: no panic, a bounded number of sends per event, and a
        /// mapping only from an answer that matches our request.
        #[test]
        fn hostile_gateway_never_breaks_the_mapper(
            events in proptest::collection::vec(
                (0u64..4000, proptest::collection::vec(any::<u8>(), 0..80)), 0..40)
        ) {
            let t0 = Instant::now();
            let mut m = PortMapper::new(client(), PORT, NONCE, 0.5);
            let _ = m.start(t0);
            let mut t = t0;
            for (dt, bytes) in events {
                t += Duration::from_millis(dt * 250);
                let out = m.tick(t);
                prop_assert!(sent(&out).len() <= 1);
                let out = m.on_datagram(t, &bytes);
                prop_assert!(sent(&out).len() <= 1);
                for o in &out {
                    if let Output::Mapped { mapping, .. } = o {
                        prop_assert!(mapping.lifetime >= MIN_LIFETIME);
                    }
                }
            }
        }
    }
}
