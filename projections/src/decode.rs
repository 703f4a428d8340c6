//! Turning payload bytes into a field map, and typed errors that name what is wrong.

use serde_json::{Map, Value};
use thiserror::Error;

/// Payloads above this size are refused before any parsing (1 MiB, the NATS default max payload).
pub const MAX_PAYLOAD_BYTES: usize = 1024 * 1024;

/// The earliest event time accepted: 0000-01-01T00:00:00Z, in epoch milliseconds. Times
/// outside the years 0000-9999 cannot be written as RFC 3339, so they are refused.
pub const MIN_TIME_MS: i64 = -62_167_219_200_000;
/// The latest event time accepted: 9999-12-31T23:59:59.999Z, in epoch milliseconds.
pub const MAX_TIME_MS: i64 = 253_402_300_799_999;
/// Epoch numbers below this magnitude are seconds, above it milliseconds.
const SECONDS_BELOW: i64 = 100_000_000_000;

/// Why a message could not become an event. Every variant names the subject.
///
/// All of these are permanent: redelivering the same bytes gives the same error,
/// so the engine parks the message instead of retrying it.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// The subject is under a projected stream but not in the catalog.
    #[error("unknown subject {subject}: not in the event catalog (docs/events.md)")]
    UnknownSubject { subject: String },
    /// The payload is larger than [`MAX_PAYLOAD_BYTES`].
    #[error("{subject}: payload of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        subject: String,
        size: usize,
        limit: usize,
    },
    /// The bytes are not valid JSON / MessagePack, or not an object at the top.
    #[error("{subject}: payload is not a valid {format} object: {reason}")]
    Malformed {
        subject: String,
        format: &'static str,
        reason: String,
    },
    /// A required field is absent or null.
    #[error("{subject}: missing required field `{field}` (expected {expected})")]
    MissingField {
        subject: String,
        field: String,
        expected: &'static str,
    },
    /// A field is present with the wrong type or an invalid value.
    #[error("{subject}: field `{field}` has the wrong type or value (expected {expected}, found {found})")]
    InvalidField {
        subject: String,
        field: String,
        expected: &'static str,
        found: String,
    },
    /// `event_type` is present and disagrees with the subject.
    #[error("{subject}: event_type {found:?} does not match the subject (expected {expected:?})")]
    EventTypeMismatch {
        subject: String,
        expected: &'static str,
        found: String,
    },
}

impl DecodeError {
    /// A short stable name for metrics labels and dead-letter headers.
    pub fn kind(&self) -> &'static str {
        match self {
            DecodeError::UnknownSubject { .. } => "unknown_subject",
            DecodeError::TooLarge { .. } => "too_large",
            DecodeError::Malformed { .. } => "malformed",
            DecodeError::MissingField { .. } => "missing_field",
            DecodeError::InvalidField { .. } => "invalid_field",
            DecodeError::EventTypeMismatch { .. } => "event_type_mismatch",
        }
    }
}

/// Payload encodings the catalog accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    MessagePack,
}

impl Format {
    /// JSON unless the `Content-Type` header names MessagePack.
    pub fn from_content_type(content_type: Option<&str>) -> Format {
        match content_type.map(|c| c.trim().to_ascii_lowercase()) {
            Some(c) if c.contains("msgpack") || c.contains("messagepack") => Format::MessagePack,
            _ => Format::Json,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Format::Json => "JSON",
            Format::MessagePack => "MessagePack",
        }
    }
}

/// Parses a payload into a top-level object, enforcing the size limit.
pub fn parse_object(
    subject: &str,
    format: Format,
    payload: &[u8],
) -> Result<Map<String, Value>, DecodeError> {
    if payload.len() > MAX_PAYLOAD_BYTES {
        return Err(DecodeError::TooLarge {
            subject: subject.to_string(),
            size: payload.len(),
            limit: MAX_PAYLOAD_BYTES,
        });
    }
    let malformed = |reason: String| DecodeError::Malformed {
        subject: subject.to_string(),
        format: format.name(),
        reason,
    };
    let value: Value = match format {
        Format::Json => serde_json::from_slice(payload).map_err(|e| malformed(e.to_string()))?,
        Format::MessagePack => {
            rmp_serde::from_slice(payload).map_err(|e| malformed(e.to_string()))?
        }
    };
    match value {
        Value::Object(map) => Ok(map),
        other => Err(malformed(format!(
            "top level is {}, not an object",
            type_name(&other)
        ))),
    }
}

pub(crate) fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Reads typed fields out of a decoded object, producing errors that name the subject and field.
pub(crate) struct Fields<'a> {
    pub subject: &'a str,
    pub map: &'a Map<String, Value>,
    /// Prefix for nested objects, e.g. `decisions[2].`.
    pub path: String,
}

impl<'a> Fields<'a> {
    pub fn new(subject: &'a str, map: &'a Map<String, Value>) -> Self {
        Fields {
            subject,
            map,
            path: String::new(),
        }
    }

    fn name(&self, field: &str) -> String {
        format!("{}{}", self.path, field)
    }

    fn invalid(&self, field: &str, expected: &'static str, found: &Value) -> DecodeError {
        DecodeError::InvalidField {
            subject: self.subject.to_string(),
            field: self.name(field),
            expected,
            found: type_name(found).to_string(),
        }
    }

    fn missing(&self, field: &str, expected: &'static str) -> DecodeError {
        DecodeError::MissingField {
            subject: self.subject.to_string(),
            field: self.name(field),
            expected,
        }
    }

    /// A required, non-empty string (ids, phases).
    pub fn req_str(&self, field: &str) -> Result<String, DecodeError> {
        const EXPECTED: &str = "a non-empty string";
        match self.map.get(field) {
            None | Some(Value::Null) => Err(self.missing(field, EXPECTED)),
            Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.clone()),
            Some(Value::String(_)) => Err(DecodeError::InvalidField {
                subject: self.subject.to_string(),
                field: self.name(field),
                expected: EXPECTED,
                found: "an empty string".to_string(),
            }),
            Some(other) => Err(self.invalid(field, EXPECTED, other)),
        }
    }

    /// An optional string; numbers and booleans are refused rather than guessed at.
    pub fn opt_str(&self, field: &str) -> Result<Option<String>, DecodeError> {
        match self.map.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(self.invalid(field, "a string", other)),
        }
    }

    /// An optional integer.
    pub fn opt_i64(&self, field: &str) -> Result<Option<i64>, DecodeError> {
        match self.map.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) if n.as_i64().is_some() => Ok(n.as_i64()),
            Some(other) => Err(self.invalid(field, "an integer", other)),
        }
    }

    /// An optional list of strings.
    pub fn opt_str_list(&self, field: &str) -> Result<Vec<String>, DecodeError> {
        const EXPECTED: &str = "an array of strings";
        match self.map.get(field) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s.clone()),
                    other => Err(self.invalid(field, EXPECTED, other)),
                })
                .collect(),
            Some(other) => Err(self.invalid(field, EXPECTED, other)),
        }
    }

    /// A required array of objects, each read with its own [`Fields`].
    pub fn req_objects(&self, field: &str) -> Result<Vec<&'a Map<String, Value>>, DecodeError> {
        const EXPECTED: &str = "an array of objects";
        match self.map.get(field) {
            None | Some(Value::Null) => Err(self.missing(field, EXPECTED)),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| match v {
                    Value::Object(m) => Ok(m),
                    other => Err(self.invalid(field, EXPECTED, other)),
                })
                .collect(),
            Some(other) => Err(self.invalid(field, EXPECTED, other)),
        }
    }

    /// Fields of a nested object, with error paths like `decisions[1].id`.
    pub fn nested(&self, field: &str, index: usize, map: &'a Map<String, Value>) -> Fields<'a> {
        Fields {
            subject: self.subject,
            map,
            path: format!("{}{}[{}].", self.path, field, index),
        }
    }

    /// The event's own time, when it carries one: RFC 3339 text, or epoch seconds/milliseconds.
    /// Returns milliseconds since the epoch.
    pub fn opt_time_ms(&self, field: &str) -> Result<Option<i64>, DecodeError> {
        const EXPECTED: &str =
            "an RFC 3339 time or epoch seconds/milliseconds within the years 0000-9999";
        match self.map.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => {
                let t =
                    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                        .map_err(|_| DecodeError::InvalidField {
                            subject: self.subject.to_string(),
                            field: self.name(field),
                            expected: EXPECTED,
                            found: format!("{s:?}"),
                        })?;
                Ok(Some((t.unix_timestamp_nanos() / 1_000_000) as i64))
            }
            Some(Value::Number(n)) => {
                // Heuristic shared by most producers: values below 10^11 in magnitude are
                // seconds (that is the year 5138 in seconds, 1973 in milliseconds); floats
                // too, so Python's `time.time() * 1000` reads as milliseconds.
                let ms = if let Some(i) = n.as_i64() {
                    if i > -SECONDS_BELOW && i < SECONDS_BELOW {
                        Some(i * 1000)
                    } else {
                        Some(i)
                    }
                } else {
                    n.as_f64().filter(|f| f.is_finite()).and_then(|f| {
                        let ms = if f.abs() < SECONDS_BELOW as f64 {
                            f * 1000.0
                        } else {
                            f
                        };
                        // Checked in f64 first: `as i64` saturates, which would store a
                        // clamped time instead of refusing it.
                        (ms >= MIN_TIME_MS as f64 && ms <= MAX_TIME_MS as f64).then_some(ms as i64)
                    })
                };
                match ms.filter(|ms| (MIN_TIME_MS..=MAX_TIME_MS).contains(ms)) {
                    Some(ms) => Ok(Some(ms)),
                    None => Err(DecodeError::InvalidField {
                        subject: self.subject.to_string(),
                        field: self.name(field),
                        expected: EXPECTED,
                        found: n.to_string(),
                    }),
                }
            }
            Some(other) => Err(self.invalid(field, EXPECTED, other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_type_selects_messagepack() {
        assert_eq!(Format::from_content_type(None), Format::Json);
        assert_eq!(
            Format::from_content_type(Some("application/json")),
            Format::Json
        );
        assert_eq!(
            Format::from_content_type(Some("application/msgpack")),
            Format::MessagePack
        );
        assert_eq!(
            Format::from_content_type(Some("Application/X-MsgPack")),
            Format::MessagePack
        );
    }

    #[test]
    fn oversized_payload_is_refused_before_parsing() {
        let big = vec![b' '; MAX_PAYLOAD_BYTES + 1];
        let err = parse_object("planning.story.created", Format::Json, &big).unwrap_err();
        assert_eq!(err.kind(), "too_large");
    }

    #[test]
    fn top_level_array_is_malformed() {
        let err = parse_object("planning.story.created", Format::Json, b"[1,2]").unwrap_err();
        assert!(err.to_string().contains("top level is an array"), "{err}");
    }

    #[test]
    fn time_accepts_rfc3339_and_epochs() {
        let map: Map<String, Value> = serde_json::from_str(
            r#"{"a":"2025-10-16T18:00:00Z","b":1760637600,"c":1760637600000,"d":true}"#,
        )
        .unwrap();
        let f = Fields::new("s", &map);
        assert_eq!(f.opt_time_ms("a").unwrap(), Some(1_760_637_600_000));
        assert_eq!(f.opt_time_ms("b").unwrap(), Some(1_760_637_600_000));
        assert_eq!(f.opt_time_ms("c").unwrap(), Some(1_760_637_600_000));
        assert!(f.opt_time_ms("d").is_err());
        assert_eq!(f.opt_time_ms("missing").unwrap(), None);
    }
}
