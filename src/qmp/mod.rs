//! The tolerant QMP client.
//!
//! [`message`] parses QMP lines into plain values (pure, tested with recorded
//! transcripts); [`client`] is the tokio transport over QEMU's unix socket. `qapi_qmp`
//! types are used for arguments and replies where they fit ([`Qmp::run`]); events stay raw
//! JSON until someone asks for a typed view ([`Event::decode`]), so a newer QEMU's events
//! never break the session.

#![warn(missing_docs)]

pub mod client;
pub mod message;

pub use client::{wait_event, Qmp, QmpError, DEFAULT_TIMEOUT};
pub use message::{Event, Greeting, Message, QemuVersion, Timestamp};
