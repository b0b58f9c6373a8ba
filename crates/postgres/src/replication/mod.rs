//! The replication side of the source: our thin protocol client and the wire format it speaks.

pub mod client;
pub mod peek;
pub mod wire;

pub use client::{CreatedSlot, LogicalStream, PipelinedStream, ReplicationClient, WalStream};
