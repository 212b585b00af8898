//! Host side of the guest agent: transports ([`Transport`]: AF_VSOCK, hybrid vsock over a
//! unix socket, plain unix socket), the blocking [`AgentClient`], and the in-guest
//! validation behind `vfioctl validate` ([`validate`]). The protocol itself is
//! `vfioctl_common::proto`, shared with the agent in `guest/`.

#![warn(missing_docs)]

pub mod client;
pub mod transport;
pub mod validate;

pub use client::{AgentClient, ClientError, DEFAULT_CALL_TIMEOUT};
pub use transport::{ConnectError, Stream, Transport, TransportParseError};
