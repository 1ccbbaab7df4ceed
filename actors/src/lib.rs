//! meshd as a library (temporary header; rewritten below).
pub mod constants;
pub mod network;
pub mod peer;
pub mod wire;
pub mod config;
pub mod connection;
pub mod context;
pub mod peers;
pub mod listener;
pub mod manager;
pub mod node;
