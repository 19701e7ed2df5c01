//! # ringkv
//!
//! (architecture essay: written below once the pieces settle)

pub mod api;
pub mod codec;
pub mod config;
pub mod coordinator;
pub mod error;
pub mod membership;
pub mod node;
pub mod quorum;
pub mod ring;
pub mod rpc;
pub mod stats;
pub mod store;
pub mod version;

pub use config::Config;
pub use error::{Error, Result};
pub use membership::GossipTransport;
pub use node::{Node, NodeHandle};
