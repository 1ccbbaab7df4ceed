//! The header chain: validation and best-chain choice ([`headers`]), and crash-safe storage
//! ([`store`]). Both sans-IO apart from the file the store appends to.

pub mod bsv_pow;
pub mod headers;
pub mod index;
pub mod presync;
pub mod store;

pub use headers::{AcceptError, Accepted, HeaderChain};
