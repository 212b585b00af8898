//! The host <-> guest agent protocol. Defined by the agent issue; both sides use these
//! types and this framing, nothing else.
