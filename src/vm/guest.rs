//! How the host reaches a VM's guest agent: the transport from the state file and the
//! per-VM secret from the run directory, for `lifecycle`, `plug`, `validate` and
//! `regress` alike.

use std::time::Duration;

use vfioctl_common::proto::Token;

use super::error::VmError;
use super::state::VmRecord;
use crate::agent::{AgentClient, Transport};

/// The agent's address and the secret its requests must carry.
pub fn access(rec: &VmRecord) -> Result<(Transport, Token), VmError> {
    let t = rec.agent.clone().ok_or(VmError::NoAgent {
        name: rec.name.to_string(),
    })?;
    let rd = rec.rundir();
    let token = rd.read_token().map_err(|source| VmError::Token {
        name: rec.name.to_string(),
        path: rd.token_file(),
        source,
    })?;
    Ok((t, token))
}

/// Connect to the VM's agent (blocking; retries until `timeout`).
pub fn connect(rec: &VmRecord, timeout: Duration) -> Result<AgentClient, VmError> {
    let (t, token) = access(rec)?;
    AgentClient::connect(&t, &token, timeout).map_err(|e| VmError::Agent {
        name: rec.name.to_string(),
        source: Box::new(e),
    })
}
