//! STUN: our public address and NAT type. The codec ([`codec`], through `stun_codec`), one
//! binding transaction ([`transaction`]) and the RFC 5780 behaviour discovery ([`nat`]) are
//! sans-IO; [`driver`] runs them over a UDP socket, and the Stun actor ([`crate::stun_actor`])
//! schedules probes and publishes what changes.

pub mod codec;
pub mod driver;
pub mod nat;
pub mod transaction;

pub use codec::{BindingResponse, StunError};
pub use nat::{Behavior, NatProbe, NatReport, NatType};
