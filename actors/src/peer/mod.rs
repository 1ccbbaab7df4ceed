//! Per-peer protocol cores: the handshake state machine, ping/RTT tracking and the typed
//! reasons a connection ends. All sans-IO: they take messages and time, return actions.

pub mod handshake;
pub mod misbehavior;
pub mod ping;
pub mod reason;
pub mod rolling_filter;
pub mod useless;

pub use handshake::{Handshake, HandshakeError, HandshakePolicy, HandshakeStep, PeerVersion};
pub use ping::{PingTracker, PongOutcome};
pub use reason::DisconnectReason;
pub use rolling_filter::RollingFilter;
pub use useless::{DropVerdict, UselessFrames};

use serde::{Deserialize, Serialize};

/// Who opened the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// We dialled the peer.
    Outbound,
    /// The peer dialled us.
    Inbound,
}

impl Direction {
    /// `outbound` or `inbound`, for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Outbound => "outbound",
            Direction::Inbound => "inbound",
        }
    }
}

impl std::fmt::Display for Direction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
