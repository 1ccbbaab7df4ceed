//! The vocabulary the actors share, in one leaf that imports no actor: peer ids and the
//! peer table, connection slots and their permits, whitelist permissions, bans and
//! discouragement, overlay and canonical addresses, network groups and gossiped addresses,
//! bandwidth buckets, and the status types the node context holds for every actor. An actor
//! folder (`connection`, `manager`, `sync`, `discovery`, `stun`, `fleet`, `tor`) imports
//! from here, `peer` and `wire`, never from another actor folder; `actors/tests/layout.rs`
//! checks it.

pub mod addr;
pub mod asmap;
pub mod bandwidth;
pub mod bans;
pub mod discourage;
pub mod fleet;
pub mod fleet_keys;
pub mod overlay;
pub mod overlay_link;
pub mod peers;
pub mod resolver;
pub mod restart_policy;
pub mod slots;
pub mod status;
pub mod whitelist;
