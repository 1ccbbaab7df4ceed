//! meshd as a library (temporary header; rewritten below).
pub mod constants;
pub mod network;
pub mod peer;
pub mod wire;
