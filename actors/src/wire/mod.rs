//! The Bitcoin wire protocol: framing ([`frame`]) and message payloads ([`message`]).
//!
//! Both are sans-IO: they take and return bytes, never touch a socket.

pub mod frame;
pub mod message;
#[cfg(test)]
mod prop_tests;

pub use frame::{encode_frame, Command, Extent, Frame, FrameDecoder, FrameError};
pub use message::{command_label, payload_shape, Message, PayloadError, PayloadShape, Protoconf};
