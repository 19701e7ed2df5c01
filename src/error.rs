//! The one error type of ringkv.
//!
//! Every fallible path returns [`Error`]. The HTTP status code of each variant is chosen in
//! exactly one place, `api::status_of`, and the enum is serializable so that an error raised
//! on a replica (for example `Unavailable` from a forwarded write) keeps its variant when it
//! crosses the RPC link back to the node that talks to the client.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Everything that can go wrong in ringkv.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Error {
    /// The client sent something malformed: a bad key, quorum value or context.
    InvalidInput(String),
    /// No such route.
    NotFound(String),
    /// The route exists but not with this method; carries the allowed methods.
    MethodNotAllowed(String),
    /// A value larger than `--max-value-bytes`.
    ValueTooLarge { size: u64, limit: u64 },
    /// A conditional write whose condition did not hold; carries the key's current context.
    PreconditionFailed { context: String },
    /// Fewer replicas answered than the quorum requires.
    Unavailable { replied: usize, required: usize },
    /// A replica refused to store a copy (its hint store is full, or the hint window for the
    /// home replica has passed).
    Rejected(String),
    /// The connection to a peer broke after a request was sent: it may or may not have been
    /// applied, so it is not retried elsewhere.
    Interrupted(String),
    /// A peer did not answer within the RPC timeout.
    Timeout,
    /// A peer could not be reached; the request was not sent.
    Unreachable(String),
    /// A peer broke the RPC protocol: corrupt or oversized frame, bad handshake.
    Protocol(String),
    /// The node is shutting down.
    Shutdown,
    /// An I/O error on this node. Kept whole locally; only its text crosses the wire.
    #[serde(with = "io_as_text")]
    Io(Arc<std::io::Error>),
}

/// `Result` with ringkv's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Builds an [`Error::InvalidInput`] from anything printable.
    pub fn invalid(msg: impl fmt::Display) -> Error {
        Error::InvalidInput(msg.to_string())
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidInput(msg) => write!(f, "{msg}"),
            Error::NotFound(path) => write!(f, "no route for {path}"),
            Error::MethodNotAllowed(allow) => write!(f, "method not allowed; allowed: {allow}"),
            Error::ValueTooLarge { size, limit } => {
                write!(
                    f,
                    "value of {size} bytes exceeds the limit of {limit} bytes"
                )
            }
            Error::PreconditionFailed { .. } => {
                write!(f, "precondition failed: the key changed or already exists")
            }
            Error::Unavailable { replied, required } => write!(
                f,
                "quorum not met: {replied} replicas answered, {required} required"
            ),
            Error::Rejected(msg) => write!(f, "copy refused: {msg}"),
            Error::Interrupted(msg) => write!(f, "outcome unknown: {msg}"),
            Error::Timeout => write!(f, "peer did not answer in time"),
            Error::Unreachable(msg) => write!(f, "peer unreachable: {msg}"),
            Error::Protocol(msg) => write!(f, "protocol error: {msg}"),
            Error::Shutdown => write!(f, "node is shutting down"),
            Error::Io(err) => write!(f, "I/O error: {err}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io(err) => Some(err.as_ref()),
            _ => None,
        }
    }
}

impl From<std::io::Error> for Error {
    fn from(err: std::io::Error) -> Self {
        Error::Io(Arc::new(err))
    }
}

impl From<crate::version::ContextError> for Error {
    fn from(err: crate::version::ContextError) -> Self {
        Error::InvalidInput(format!("malformed context: {err}"))
    }
}

/// An `io::Error` cannot be serialized; across RPC it travels as its message.
mod io_as_text {
    use std::sync::Arc;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(err: &Arc<std::io::Error>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&err.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Arc<std::io::Error>, D::Error> {
        let msg = String::deserialize(d)?;
        Ok(Arc::new(std::io::Error::other(msg)))
    }
}
