//! The Bitcoin wire protocol: framing ([`frame`]), message payloads ([`message`]) and the
//! BIP324 v2 encrypted transport under the frames ([`v2`]).
//!
//! Both are sans-IO: they take and return bytes, never touch a socket.

pub mod compact;
pub mod frame;
pub mod fschacha;
pub mod message;
pub mod overlay_announce;
#[cfg(test)]
mod prop_tests;
pub mod v2;

pub use frame::{encode_frame, Command, Extent, Frame, FrameDecoder, FrameError};
pub use message::{command_label, payload_shape, Message, PayloadError, PayloadShape, Protoconf};
