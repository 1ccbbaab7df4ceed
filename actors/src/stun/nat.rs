//! NAT behaviour discovery (RFC 5780) as a sans-IO state machine, mapped to the classic labels.
//!
//! The driver asks [`NatProbe::next`] for the next query, runs it and feeds back the answer
//! or `None` for no answer in time. The binding and mapping tests share one local UDP socket
//! (so mappings are comparable); the filtering tests run from a second, fresh socket, so the
//! addresses the mapping tests contacted do not open the filter for them (RFC 5780 §4.4):
//!
//! 1. **Binding test** to each configured server in turn until one answers (fallback). If
//!    none answers over UDP the driver checks whether any server is reachable over TCP: if so,
//!    UDP is blocked; if not, the verdict is unknown (the servers may simply be down).
//! 2. If the answer lacks OTHER-ADDRESS the server does not support RFC 5780: the public
//!    address is known, the NAT type is reported as unknown rather than guessed.
//! 3. **Mapping.** If the mapped address is our own, there is no NAT. Otherwise the binding
//!    test is repeated to the alternate IP (same port): the same mapping means
//!    endpoint-independent; otherwise once more to the alternate IP and port: the same as the
//!    previous means address-dependent, else address-and-port-dependent.
//! 4. **Filtering.** A request with CHANGE-REQUEST(ip, port): an answer from the alternate
//!    address means endpoint-independent filtering. Otherwise CHANGE-REQUEST(port): an answer
//!    means address-dependent, none address-and-port-dependent.
//!
//! Labels: no NAT and open filtering = open internet; no NAT and filtered = symmetric UDP
//! firewall; endpoint-independent mapping with endpoint-independent / address-dependent /
//! address-and-port-dependent filtering = full cone / restricted cone / port-restricted cone;
//! any other mapping = symmetric.

use std::net::{IpAddr, SocketAddr};

use super::codec::BindingResponse;

pub use crate::shared::status::{Behavior, NatReport, NatType};

/// A query for the driver to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Query {
    /// A binding request to `to`, with an optional CHANGE-REQUEST (ip, port); the answer may
    /// come from `expect_from`.
    Binding {
        /// Destination.
        to: SocketAddr,
        /// CHANGE-REQUEST flags (ip, port).
        change: Option<(bool, bool)>,
        /// The address a changed response comes from.
        expect_from: Option<SocketAddr>,
        /// Run it from the second socket: the filtering tests need a binding of their own, or
        /// the addresses contacted by the mapping tests would open the filter (RFC 5780 §4.4).
        filtering_socket: bool,
    },
    /// Whether any of the servers accepts a TCP connection (feed back with
    /// [`NatProbe::on_tcp`]).
    TcpReachable,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Primary(usize),
    Tcp,
    MappingAltIp,
    MappingAltIpPort,
    FilteringChangeBoth,
    FilteringChangePort,
    Done,
}

/// The probe. See the module documentation.
#[derive(Debug, Clone)]
pub struct NatProbe {
    servers: Vec<SocketAddr>,
    local_ip: Option<IpAddr>,
    local_port: u16,
    step: Step,
    server: Option<SocketAddr>,
    other: Option<SocketAddr>,
    m1: Option<SocketAddr>,
    m2: Option<SocketAddr>,
    no_nat: bool,
    mapping: Option<Behavior>,
    filtering: Option<Behavior>,
    verdict: Option<NatType>,
}

impl NatProbe {
    /// A probe of `servers` (in order) from a socket bound to `local_port`, whose traffic
    /// leaves from `local_ip` (if known).
    pub fn new(servers: Vec<SocketAddr>, local_ip: Option<IpAddr>, local_port: u16) -> NatProbe {
        let step = if servers.is_empty() {
            Step::Done
        } else {
            Step::Primary(0)
        };
        NatProbe {
            servers,
            local_ip,
            local_port,
            step,
            server: None,
            other: None,
            m1: None,
            m2: None,
            no_nat: false,
            mapping: None,
            filtering: None,
            verdict: if step == Step::Done {
                Some(NatType::Unknown)
            } else {
                None
            },
        }
    }

    /// The next query, or `None` when the probe is done.
    pub fn next(&self) -> Option<Query> {
        let binding = |to, change, expect_from, filtering_socket| {
            Some(Query::Binding {
                to,
                change,
                expect_from,
                filtering_socket,
            })
        };
        match self.step {
            Step::Primary(i) => binding(self.servers[i], None, None, false),
            Step::Tcp => Some(Query::TcpReachable),
            Step::Done => None,
            Step::MappingAltIp => binding(
                SocketAddr::new(self.other?.ip(), self.server?.port()),
                None,
                None,
                false,
            ),
            Step::MappingAltIpPort => binding(self.other?, None, None, false),
            Step::FilteringChangeBoth => {
                binding(self.server?, Some((true, true)), self.other, true)
            }
            Step::FilteringChangePort => binding(
                self.server?,
                Some((false, true)),
                Some(SocketAddr::new(self.server?.ip(), self.other?.port())),
                true,
            ),
        }
    }

    /// Feeds the answer to the last binding query (`None`: no answer in time).
    pub fn on_result(&mut self, r: Option<BindingResponse>) {
        match (self.step, r) {
            (Step::Primary(i), None) => {
                self.step = if i + 1 < self.servers.len() {
                    Step::Primary(i + 1)
                } else {
                    Step::Tcp
                };
            }
            (Step::Primary(i), Some(resp)) => {
                self.server = Some(self.servers[i]);
                self.m1 = Some(resp.mapped);
                self.other = resp.other;
                if resp.other.is_none() {
                    return self.finish(NatType::Unknown);
                }
                let own_port = resp.mapped.port() == self.local_port;
                self.no_nat = own_port && self.local_ip.is_some_and(|ip| ip == resp.mapped.ip());
                self.step = if self.no_nat {
                    Step::FilteringChangeBoth
                } else {
                    Step::MappingAltIp
                };
            }
            (Step::MappingAltIp, r) => match r {
                None => self.finish(NatType::Unknown),
                Some(resp) if Some(resp.mapped) == self.m1 => {
                    self.mapping = Some(Behavior::EndpointIndependent);
                    self.step = Step::FilteringChangeBoth;
                }
                Some(resp) => {
                    self.m2 = Some(resp.mapped);
                    self.step = Step::MappingAltIpPort;
                }
            },
            (Step::MappingAltIpPort, r) => match r {
                None => self.finish(NatType::Unknown),
                Some(resp) => {
                    self.mapping = Some(if Some(resp.mapped) == self.m2 {
                        Behavior::AddressDependent
                    } else {
                        Behavior::AddressAndPortDependent
                    });
                    self.step = Step::FilteringChangeBoth;
                }
            },
            (Step::FilteringChangeBoth, Some(_)) => {
                self.filtering = Some(Behavior::EndpointIndependent);
                self.classify();
            }
            (Step::FilteringChangeBoth, None) => {
                if self.no_nat {
                    self.filtering = Some(Behavior::AddressAndPortDependent);
                    return self.classify();
                }
                self.step = Step::FilteringChangePort;
            }
            (Step::FilteringChangePort, r) => {
                self.filtering = Some(if r.is_some() {
                    Behavior::AddressDependent
                } else {
                    Behavior::AddressAndPortDependent
                });
                self.classify();
            }
            (Step::Tcp | Step::Done, _) => {}
        }
    }

    /// Feeds the answer to [`Query::TcpReachable`].
    pub fn on_tcp(&mut self, reachable: bool) {
        if self.step == Step::Tcp {
            self.finish(if reachable {
                NatType::UdpBlocked
            } else {
                NatType::Unknown
            });
        }
    }

    fn classify(&mut self) {
        let t = match (self.no_nat, self.mapping, self.filtering) {
            (true, _, Some(Behavior::EndpointIndependent)) => NatType::OpenInternet,
            (true, _, _) => NatType::SymmetricUdpFirewall,
            (false, Some(Behavior::EndpointIndependent), Some(Behavior::EndpointIndependent)) => {
                NatType::FullCone
            }
            (false, Some(Behavior::EndpointIndependent), Some(Behavior::AddressDependent)) => {
                NatType::RestrictedCone
            }
            (false, Some(Behavior::EndpointIndependent), Some(_)) => NatType::PortRestrictedCone,
            (false, Some(_), _) => NatType::Symmetric,
            _ => NatType::Unknown,
        };
        self.finish(t);
    }

    fn finish(&mut self, t: NatType) {
        self.verdict = Some(t);
        self.step = Step::Done;
    }

    /// The report, once done.
    pub fn report(&self) -> Option<NatReport> {
        Some(NatReport {
            nat_type: self.verdict?,
            mapping: if self.no_nat {
                Some(Behavior::EndpointIndependent)
            } else {
                self.mapping
            },
            filtering: self.filtering,
            public: self.m1,
            server: self.server,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S1: &str = "203.0.113.1:3478";
    const ALT: &str = "203.0.113.2:3479";

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn resp(mapped: &str) -> Option<BindingResponse> {
        Some(BindingResponse {
            mapped: sa(mapped),
            other: Some(sa(ALT)),
            origin: None,
        })
    }

    /// A simulated network: `nat` maps (destination) → mapped address, `allows` decides
    /// whether a response from an address gets through.
    fn run(
        local: &str,
        nat: impl Fn(SocketAddr) -> String,
        allows: impl Fn(SocketAddr, SocketAddr) -> bool,
    ) -> NatReport {
        let l = sa(local);
        let mut p = NatProbe::new(vec![sa(S1)], Some(l.ip()), l.port());
        while let Some(q) = p.next() {
            match q {
                Query::Binding { to, change, .. } => {
                    let from = match change {
                        None => to,
                        Some((true, true)) => sa(ALT),
                        Some((false, true)) => SocketAddr::new(to.ip(), sa(ALT).port()),
                        Some((true, false)) => SocketAddr::new(sa(ALT).ip(), to.port()),
                        Some((false, false)) => to,
                    };
                    let answer = if allows(from, to) {
                        resp(&nat(to))
                    } else {
                        None
                    };
                    p.on_result(answer);
                }
                Query::TcpReachable => p.on_tcp(true),
            }
        }
        p.report().unwrap()
    }

    #[test]
    fn every_classic_label_from_simulated_behaviour() {
        let eim = |_: SocketAddr| "203.0.113.254:40000".to_string();
        let apdm = |to: SocketAddr| {
            let octet = match to.ip() {
                IpAddr::V4(v4) => v4.octets()[3] as u16,
                IpAddr::V6(_) => 0,
            };
            format!("203.0.113.254:{}", 40000 + to.port() + octet * 7)
        };
        let open = run(
            "198.51.100.10:5000",
            |_| "198.51.100.10:5000".into(),
            |_, _| true,
        );
        assert_eq!(open.nat_type, NatType::OpenInternet);
        let fw = run(
            "198.51.100.10:5000",
            |_| "198.51.100.10:5000".into(),
            |from, to| from == to,
        );
        assert_eq!(fw.nat_type, NatType::SymmetricUdpFirewall);
        assert_eq!(
            run("10.0.0.10:5000", eim, |_, _| true).nat_type,
            NatType::FullCone
        );
        assert_eq!(
            run("10.0.0.10:5000", eim, |from, to| from.ip() == to.ip()).nat_type,
            NatType::RestrictedCone
        );
        assert_eq!(
            run("10.0.0.10:5000", eim, |from, to| from == to).nat_type,
            NatType::PortRestrictedCone
        );
        let sym = run("10.0.0.10:5000", apdm, |from, to| from == to);
        assert_eq!(sym.nat_type, NatType::Symmetric);
        assert_eq!(sym.mapping, Some(Behavior::AddressAndPortDependent));
        assert_eq!(sym.public, Some(sa("203.0.113.254:43485")));
    }

    #[test]
    fn falls_back_to_the_next_server_and_separates_blocked_from_unknown() {
        let mut p = NatProbe::new(vec![sa("203.0.113.3:3478"), sa(S1)], None, 5000);
        assert!(
            matches!(p.next(), Some(Query::Binding { to, .. }) if to == sa("203.0.113.3:3478"))
        );
        p.on_result(None);
        assert!(matches!(p.next(), Some(Query::Binding { to, .. }) if to == sa(S1)));
        p.on_result(None);
        assert_eq!(p.next(), Some(Query::TcpReachable));
        let mut q = p.clone();
        p.on_tcp(true);
        assert_eq!(p.report().unwrap().nat_type, NatType::UdpBlocked);
        q.on_tcp(false);
        assert_eq!(q.report().unwrap().nat_type, NatType::Unknown);
    }

    #[test]
    fn a_server_without_rfc5780_gives_the_address_but_no_guess() {
        let mut p = NatProbe::new(vec![sa(S1)], None, 5000);
        p.on_result(Some(BindingResponse {
            mapped: sa("203.0.113.254:40000"),
            other: None,
            origin: None,
        }));
        let r = p.report().unwrap();
        assert_eq!(
            (r.nat_type, r.public),
            (NatType::Unknown, Some(sa("203.0.113.254:40000")))
        );
        assert_eq!(p.next(), None);
    }
}
