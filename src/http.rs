//! The HTTP protocol both ends speak: the headers ringkv adds, the status code of each
//! [`Error`], and the JSON error body, written by the server ([`crate::api`]) and read back by
//! the client ([`crate::client`]).

use hyper::StatusCode;
use serde_json::json;

use std::sync::Arc;

use crate::error::Error;

/// The content type of `GET /admin/backup`'s answer and `POST /admin/restore`'s body
/// ([`crate::backup`]).
pub const MSGPACK: &str = "application/msgpack";

/// Header carrying an opaque causal context, in both directions.
pub const CONTEXT_HEADER: &str = "x-ringkv-context";

/// Header carrying a value's expiry (RFC 3339) on reads.
pub const EXPIRES_HEADER: &str = "x-ringkv-expires-at";

/// Header carrying the version of the ring clients route by ([`crate::membership::View::routing_version`]) on
/// every answer: a client that routes by key fetches `GET /cluster/ring` again when it
/// changes.
pub const RING_HEADER: &str = "x-ringkv-ring";

/// Header carrying a request's id, in both directions.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The one mapping from errors to HTTP status codes.
pub fn status_of(err: &Error) -> StatusCode {
    match err {
        Error::InvalidInput(_) => StatusCode::BAD_REQUEST,
        Error::NotFound(_) => StatusCode::NOT_FOUND,
        Error::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
        Error::Unauthorized(_) => StatusCode::UNAUTHORIZED,
        Error::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
        Error::Forbidden(_) => StatusCode::FORBIDDEN,
        Error::PreconditionFailed { .. } => StatusCode::PRECONDITION_FAILED,
        Error::ValueTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        Error::Unavailable { .. }
        | Error::Rejected(_)
        | Error::Interrupted(_)
        | Error::Timeout
        | Error::Unreachable(_)
        | Error::Shutdown
        | Error::Storage(_) => StatusCode::SERVICE_UNAVAILABLE,
        Error::MemoryFull { .. } => StatusCode::INSUFFICIENT_STORAGE,
        Error::Protocol(_) => StatusCode::BAD_GATEWAY,
        Error::Io(_) | Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The JSON body of an error answer: `{"error": message, "kind": Error::kind}` plus the
/// counts of a quorum failure, the limit of a too-large value or the context of a failed
/// condition.
pub fn error_body(err: &Error) -> serde_json::Value {
    let mut body = json!({ "error": err.to_string(), "kind": err.kind() });
    match err {
        Error::Unavailable { replied, required } => {
            body["replied"] = json!(replied);
            body["required"] = json!(required);
        }
        Error::ValueTooLarge { limit, .. } => body["limit"] = json!(limit),
        Error::PreconditionFailed { context } => body["context"] = json!(context),
        Error::MemoryFull { used, limit } => {
            body["used"] = json!(used);
            body["limit"] = json!(limit);
        }
        _ => {}
    }
    body
}

/// An error answer as a client received it: what [`error_from_answer`] reads.
#[derive(Debug, Clone)]
pub struct ErrorAnswer<'a> {
    pub status: StatusCode,
    pub body: &'a [u8],
    /// The `allow` header of a 405.
    pub allow: Option<&'a str>,
    /// The `x-ringkv-context` header, as sent.
    pub context: Option<String>,
}

/// Rebuilds the server's [`Error`] from an error answer: by the body's `kind`
/// ([`Error::kind`]), or by the status code for an answer without one (a node that predates
/// kinds). A variant carrying text gets the message back without the prefix its `Display`
/// adds (the unit tests below keep the two in step).
pub fn error_from_answer(ans: &ErrorAnswer<'_>, path: &str, sent_bytes: u64) -> Error {
    let json: Option<serde_json::Value> = serde_json::from_slice(ans.body).ok();
    let field = |name: &str| json.as_ref().and_then(|j| j.get(name));
    let msg = field("error")
        .and_then(|v| v.as_str())
        .map(str::to_string)
        .unwrap_or_else(|| String::from_utf8_lossy(ans.body).into_owned());
    let count = |name: &str| field(name).and_then(|v| v.as_u64());
    let text = |prefix: &str| msg.strip_prefix(prefix).unwrap_or(&msg).to_string();
    let of_kind = |kind: &str| {
        Some(match kind {
            "invalid_input" => Error::InvalidInput(msg.clone()),
            "not_found" => Error::NotFound(path.to_string()),
            "method_not_allowed" => {
                Error::MethodNotAllowed(ans.allow.map_or_else(|| msg.clone(), str::to_string))
            }
            "unauthorized" => Error::Unauthorized(text("unauthorized: ")),
            "forbidden" => Error::Forbidden(text("forbidden: ")),
            "request_timeout" => Error::RequestTimeout,
            "value_too_large" => Error::ValueTooLarge {
                size: sent_bytes,
                limit: count("limit").unwrap_or(0),
            },
            "precondition_failed" => Error::PreconditionFailed {
                context: field("context")
                    .and_then(|v| v.as_str())
                    .map(str::to_string)
                    .or_else(|| ans.context.clone())
                    .unwrap_or_default(),
            },
            "unavailable" => Error::Unavailable {
                replied: count("replied").unwrap_or(0) as usize,
                required: count("required").unwrap_or(0) as usize,
            },
            "rejected" => Error::Rejected(text("copy refused: ")),
            "interrupted" => Error::Interrupted(text("outcome unknown: ")),
            "timeout" => Error::Timeout,
            "unreachable" => Error::Unreachable(text("peer unreachable: ")),
            "protocol" => Error::Protocol(text("protocol error: ")),
            "shutdown" => Error::Shutdown,
            "storage" => Error::Storage(text("storage: ")),
            "memory_full" => Error::MemoryFull {
                used: count("used").unwrap_or(0),
                limit: count("limit").unwrap_or(0),
            },
            "io" => Error::Io(Arc::new(std::io::Error::other(text("I/O error: ")))),
            "internal" => Error::internal(text("internal error: ")),
            _ => return None,
        })
    };
    // An older node's answer, or a kind newer than this client: the status decides, and
    // the 503s it cannot tell apart read as unreachable.
    let by_status = match ans.status {
        StatusCode::BAD_REQUEST => "invalid_input",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::REQUEST_TIMEOUT => "request_timeout",
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::FORBIDDEN => "forbidden",
        StatusCode::PRECONDITION_FAILED => "precondition_failed",
        StatusCode::PAYLOAD_TOO_LARGE => "value_too_large",
        StatusCode::SERVICE_UNAVAILABLE if count("replied").is_some() => "unavailable",
        StatusCode::SERVICE_UNAVAILABLE => "unreachable",
        StatusCode::BAD_GATEWAY => "protocol",
        StatusCode::INTERNAL_SERVER_ERROR => "io",
        _ => "",
    };
    field("kind")
        .and_then(|v| v.as_str())
        .and_then(of_kind)
        .or_else(|| of_kind(by_status))
        .unwrap_or_else(|| {
            let status = ans.status;
            Error::Protocol(format!("unexpected answer {status} to {path}: {msg}"))
        })
}
