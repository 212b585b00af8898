//! QMP wire messages, parsed from one line of JSON each (pure, no I/O).
//!
//! QEMU writes one JSON object per line: the greeting `{"QMP": {...}}`, replies
//! `{"return": ..., "id": ...}` / `{"error": {"class", "desc"}, "id": ...}` and events
//! `{"event": NAME, "data": {...}, "timestamp": {...}}`. Events are kept as a name plus raw
//! JSON and decoded lazily, so an event this build does not know (a newer QEMU's) is
//! delivered, never fatal: the `qapi` crate's closed event enum kills its stream on one.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// QEMU's event timestamp (host wall clock when the event was emitted).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timestamp {
    /// Whole seconds since the epoch.
    pub seconds: i64,
    /// Microseconds past `seconds`.
    pub microseconds: i64,
}

impl Timestamp {
    /// Seconds since the epoch as a float.
    pub fn as_secs_f64(&self) -> f64 {
        self.seconds as f64 + self.microseconds as f64 / 1e6
    }
}

/// One asynchronous event, whatever its name.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    #[serde(rename = "event")]
    /// The event's name (`DEVICE_DELETED`).
    pub name: String,
    #[serde(default)]
    /// Its `data`, undecoded.
    pub data: Value,
    #[serde(default)]
    /// When QEMU emitted it.
    pub timestamp: Option<Timestamp>,
}

impl Event {
    /// Decode `data` as a typed event, e.g. `qapi_qmp::DEVICE_DELETED`.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_value(self.data.clone())
    }

    /// `data.device` of `DEVICE_DELETED` (absent for virtio backends).
    pub fn device(&self) -> Option<&str> {
        self.data.get("device").and_then(Value::as_str)
    }
}

/// The greeting's version block.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QemuVersion {
    /// Major version.
    pub major: u32,
    /// Minor version.
    pub minor: u32,
    /// Micro version.
    pub micro: u32,
    #[serde(default)]
    /// The distribution's package string (`Debian 1:8.2.2+ds-0ubuntu1`).
    pub package: String,
}

/// What QEMU says when a client connects.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Greeting {
    /// QEMU's version.
    pub version: QemuVersion,
    /// The capabilities QEMU offers (`oob`).
    pub capabilities: Vec<String>,
}

/// An error reply: QMP's error class (`GenericError`, `DeviceNotFound`, ...) and text.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QmpErrorReply {
    /// QMP's error class.
    pub class: String,
    /// QMP's error text.
    pub desc: String,
}

/// One parsed line.
#[derive(Clone, Debug, PartialEq)]
pub enum Message {
    /// The greeting, first on every connection.
    Greeting(Greeting),
    /// A command's reply.
    Return {
        /// The `id` the command carried.
        id: Option<Value>,
        /// The result.
        value: Value,
    },
    /// A command's error reply.
    Error {
        /// The `id` the command carried.
        id: Option<Value>,
        /// The error.
        error: QmpErrorReply,
    },
    /// An asynchronous event.
    Event(Event),
}

/// A line that is not a QMP message.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("not JSON")]
    /// The line is not JSON.
    Json(#[from] serde_json::Error),
    #[error("a JSON object with none of QMP, return, error, event: {0}")]
    /// The line is a JSON object QMP does not send.
    Unknown(String),
}

/// Parse one line of QMP output.
pub fn parse_line(line: &str) -> Result<Message, ParseError> {
    let v: Value = serde_json::from_str(line.trim())?;
    let Value::Object(mut obj) = v else {
        return Err(ParseError::Unknown(line.trim().to_string()));
    };
    let id = obj.remove("id");
    if let Some(q) = obj.remove("QMP") {
        let version = q
            .get("version")
            .and_then(|v| v.get("qemu"))
            .cloned()
            .unwrap_or(Value::Null);
        let mut version: QemuVersion = serde_json::from_value(version)?;
        if let Some(p) = q
            .get("version")
            .and_then(|v| v.get("package"))
            .and_then(Value::as_str)
        {
            version.package = p.trim().to_string();
        }
        let capabilities = q
            .get("capabilities")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|c| c.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        return Ok(Message::Greeting(Greeting {
            version,
            capabilities,
        }));
    }
    if let Some(value) = obj.remove("return") {
        return Ok(Message::Return { id, value });
    }
    if let Some(e) = obj.remove("error") {
        let error: QmpErrorReply = serde_json::from_value(e)?;
        return Ok(Message::Error { id, error });
    }
    if obj.contains_key("event") {
        let ev: Event = serde_json::from_value(Value::Object(obj))?;
        return Ok(Message::Event(ev));
    }
    Err(ParseError::Unknown(line.trim().to_string()))
}

/// The line to send for `command` with optional arguments and a numeric id.
pub fn command_line(command: &str, arguments: Option<&Value>, id: u64) -> String {
    let mut obj = serde_json::Map::new();
    obj.insert("execute".into(), Value::String(command.into()));
    if let Some(a) = arguments {
        if !(a.is_null() || a.as_object().is_some_and(|o| o.is_empty())) {
            obj.insert("arguments".into(), a.clone());
        }
    }
    obj.insert("id".into(), Value::from(id));
    let mut s = Value::Object(obj).to_string();
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn greeting_from_qemu_7_2() {
        let l = r#"{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian 1:7.2+dfsg-7+deb12u18+b3"}, "capabilities": ["oob"]}}"#;
        let Message::Greeting(g) = parse_line(l).unwrap() else {
            panic!()
        };
        assert_eq!(
            (g.version.major, g.version.minor, g.version.micro),
            (7, 2, 22)
        );
        assert_eq!(g.capabilities, vec!["oob".to_string()]);
        assert!(g.version.package.starts_with("Debian"));
    }

    #[test]
    fn replies_and_errors_keep_their_id() {
        assert_eq!(
            parse_line(r#"{"return": {}, "id": 7}"#).unwrap(),
            Message::Return {
                id: Some(json!(7)),
                value: json!({})
            }
        );
        let m = parse_line(
            r#"{"id": 3, "error": {"class": "GenericError", "desc": "Bus 'nope' not found"}}"#,
        )
        .unwrap();
        assert_eq!(
            m,
            Message::Error {
                id: Some(json!(3)),
                error: QmpErrorReply {
                    class: "GenericError".into(),
                    desc: "Bus 'nope' not found".into()
                }
            }
        );
    }

    #[test]
    fn known_and_unknown_events() {
        let m = parse_line(r#"{"timestamp": {"seconds": 1795314637, "microseconds": 852131}, "event": "DEVICE_DELETED", "data": {"device": "gpu0", "path": "/machine/peripheral/gpu0"}}"#).unwrap();
        let Message::Event(e) = m else { panic!() };
        assert_eq!(e.device(), Some("gpu0"));
        let d: qapi_qmp::DEVICE_DELETED = e.decode().unwrap();
        assert_eq!(d.path, "/machine/peripheral/gpu0");
        assert!((e.timestamp.unwrap().as_secs_f64() - 1795314637.852131).abs() < 1e-6);
        // A future QEMU's event, and one without data: both just events.
        let Message::Event(e) = parse_line(r#"{"event": "SOME_FUTURE_EVENT", "data": {"x": [1]}, "timestamp": {"seconds": 1, "microseconds": 0}}"#).unwrap() else { panic!() };
        assert_eq!(e.name, "SOME_FUTURE_EVENT");
        let Message::Event(e) = parse_line(r#"{"event": "RESUME"}"#).unwrap() else {
            panic!()
        };
        assert_eq!(e.data, Value::Null);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(parse_line("not json").is_err());
        assert!(parse_line("[1,2]").is_err());
        assert!(parse_line(r#"{"what": 1}"#).is_err());
    }

    #[test]
    fn command_lines() {
        assert_eq!(
            command_line("query-status", None, 1),
            "{\"execute\":\"query-status\",\"id\":1}\n"
        );
        let l = command_line("device_del", Some(&json!({"id": "gpu0"})), 2);
        let v: Value = serde_json::from_str(&l).unwrap();
        assert_eq!(
            v,
            json!({"execute": "device_del", "arguments": {"id": "gpu0"}, "id": 2})
        );
        assert!(!command_line("quit", Some(&json!({})), 3).contains("arguments"));
    }
}
