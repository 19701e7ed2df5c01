//! The one error type of ringkv.
//!
//! Every fallible path returns [`Error`]. The HTTP status code of each variant is chosen in
//! exactly one place, `http::status_of`, next to its [`Error::kind`], the stable name an HTTP
//! error body carries so that a client rebuilds the variant without reading the message. The
//! enum is serializable so that an error raised on a replica (for example `Unavailable` from a
//! forwarded write) keeps its variant when it crosses the RPC link back to the node that talks
//! to the client.
//!
//! An error from a library ringkv builds on is kept whole, as the [`source`] of
//! [`Error::Io`] or [`Error::Internal`], so a caller can still downcast it; only its text
//! crosses the wire.
//!
//! [`source`]: std::error::Error::source

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
    /// The request needs an API token, and had none or an unknown one.
    Unauthorized(String),
    /// The request's API token has too small a role for it.
    Forbidden(String),
    /// The client did not send its request body within `--http-body-timeout-secs`.
    RequestTimeout,
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
    /// The node's write-ahead log could not be written (a full disk): it acknowledges no
    /// write until it can log again.
    Storage(String),
    /// The node holds as much memory as `--max-memory` allows: it refuses new values until
    /// memory is freed ([`crate::memory`]). `used` and `limit` are bytes. Crosses RPC only on
    /// protocol 6 and later; an older peer is sent [`Error::Rejected`] instead.
    MemoryFull { used: u64, limit: u64 },
    /// An I/O error on this node (a file, a socket, gossip that could not bind). Kept whole
    /// locally; only its text crosses the wire.
    #[serde(with = "io_as_text")]
    Io(Arc<std::io::Error>),
    /// A library ringkv builds on failed on this node other than by I/O (metrics could not be
    /// encoded). Kept whole locally, as the source; only its text crosses the wire.
    #[serde(with = "source_as_text")]
    Internal(Arc<dyn std::error::Error + Send + Sync>),
}

/// `Result` with ringkv's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Builds an [`Error::InvalidInput`] from anything printable.
    pub fn invalid(msg: impl fmt::Display) -> Error {
        Error::InvalidInput(msg.to_string())
    }

    /// Builds an [`Error::Internal`] keeping `err` as its source (`anyhow::Error` included).
    pub fn internal(err: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Error {
        Error::Internal(Arc::from(err.into()))
    }

    /// The variant's stable snake_case name: the `"kind"` of an HTTP error body, from which
    /// a client rebuilds the variant. Never renamed; a new variant gets a new name.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::InvalidInput(_) => "invalid_input",
            Error::NotFound(_) => "not_found",
            Error::MethodNotAllowed(_) => "method_not_allowed",
            Error::Unauthorized(_) => "unauthorized",
            Error::Forbidden(_) => "forbidden",
            Error::RequestTimeout => "request_timeout",
            Error::ValueTooLarge { .. } => "value_too_large",
            Error::PreconditionFailed { .. } => "precondition_failed",
            Error::Unavailable { .. } => "unavailable",
            Error::Rejected(_) => "rejected",
            Error::Interrupted(_) => "interrupted",
            Error::Timeout => "timeout",
            Error::Unreachable(_) => "unreachable",
            Error::Protocol(_) => "protocol",
            Error::Shutdown => "shutdown",
            Error::Storage(_) => "storage",
            Error::MemoryFull { .. } => "memory_full",
            Error::Io(_) => "io",
            Error::Internal(_) => "internal",
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidInput(msg) => write!(f, "{msg}"),
            Error::NotFound(path) => write!(f, "no route for {path}"),
            Error::MethodNotAllowed(allow) => write!(f, "method not allowed; allowed: {allow}"),
            Error::Unauthorized(msg) => write!(f, "unauthorized: {msg}"),
            Error::Forbidden(msg) => write!(f, "forbidden: {msg}"),
            Error::RequestTimeout => write!(f, "the request body did not arrive in time"),
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
            Error::Storage(msg) => write!(f, "storage: {msg}"),
            Error::MemoryFull { used, limit } => write!(
                f,
                "memory full: this node uses {used} of its {limit} bytes (--max-memory); \
                 retry later, delete keys, or add nodes"
            ),
            Error::Io(err) => write!(f, "I/O error: {}", Chain(err.as_ref())),
            Error::Internal(err) => write!(f, "internal error: {}", Chain(err.as_ref())),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io(err) => Some(err.as_ref()),
            Error::Internal(err) => Some(err.as_ref()),
            _ => None,
        }
    }
}

impl From<std::io::Error> for Error {
    fn from(err: std::io::Error) -> Self {
        Error::Io(Arc::new(err))
    }
}

/// `anyhow` errors come from chitchat (gossip), and are nearly always a socket that would not
/// bind: one with an `io::Error` underneath is [`Error::Io`] of that error's kind, anything
/// else [`Error::Internal`]. Either way the whole chain is kept.
impl From<anyhow::Error> for Error {
    fn from(err: anyhow::Error) -> Self {
        let io_kind = err.downcast_ref::<std::io::Error>().map(|e| e.kind());
        match io_kind {
            Some(kind) => Error::Io(Arc::new(std::io::Error::new(kind, err))),
            None => Error::internal(err),
        }
    }
}

/// An error and its causes, `outer: inner: root`. ringkv prints errors with `{}` (the CLI,
/// HTTP bodies), and a library's outermost message alone rarely says what to fix.
struct Chain<'a>(&'a (dyn std::error::Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(err) = cause {
            write!(f, ": {err}")?;
            cause = err.source();
        }
        Ok(())
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
        s.serialize_str(&super::Chain(err.as_ref()).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Arc<std::io::Error>, D::Error> {
        let msg = String::deserialize(d)?;
        Ok(Arc::new(std::io::Error::other(msg)))
    }
}

/// The source of an [`Error::Internal`] crosses RPC as its message, chain included.
mod source_as_text {
    use std::error::Error;
    use std::fmt;
    use std::sync::Arc;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(
        err: &Arc<dyn Error + Send + Sync>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::Chain(err.as_ref()).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Arc<dyn Error + Send + Sync>, D::Error> {
        Ok(Arc::new(Remote(String::deserialize(d)?)))
    }

    /// A source that arrived as text from another node.
    #[derive(Debug)]
    pub struct Remote(pub String);

    impl fmt::Display for Remote {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(&self.0)
        }
    }

    impl Error for Remote {}
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every variant, once.
    fn one_of_each() -> Vec<Error> {
        vec![
            Error::invalid("bad key"),
            Error::NotFound("/x".into()),
            Error::MethodNotAllowed("GET".into()),
            Error::Unauthorized("no token".into()),
            Error::Forbidden("read only".into()),
            Error::RequestTimeout,
            Error::ValueTooLarge { size: 2, limit: 1 },
            Error::PreconditionFailed {
                context: "c".into(),
            },
            Error::Unavailable {
                replied: 1,
                required: 2,
            },
            Error::Rejected("full".into()),
            Error::Interrupted("lost".into()),
            Error::Timeout,
            Error::Unreachable("n2".into()),
            Error::Protocol("bad frame".into()),
            Error::Shutdown,
            Error::Storage("no space left".into()),
            Error::MemoryFull {
                used: 2_000,
                limit: 1_000,
            },
            Error::Io(Arc::new(std::io::Error::other("disk"))),
            Error::internal(std::fmt::Error),
        ]
    }

    #[test]
    fn kinds_are_distinct_snake_case_names() {
        let kinds: Vec<&str> = one_of_each().iter().map(Error::kind).collect();
        let mut unique = kinds.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), kinds.len(), "{kinds:?}");
        for kind in kinds {
            assert!(
                kind.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{kind}"
            );
        }
    }

    /// A foreign error stays reachable as the source, its causes show in the message, and
    /// across RPC the message survives.
    #[test]
    fn foreign_errors_keep_their_source() {
        let root = std::io::Error::new(std::io::ErrorKind::AddrInUse, "address in use");
        let err = Error::from(anyhow::Error::new(root).context("failed to bind gossip"));
        assert_eq!(
            err.to_string(),
            "I/O error: failed to bind gossip: address in use"
        );
        let Error::Io(io) = &err else {
            panic!("an anyhow error over an io::Error is Io: {err:?}");
        };
        assert_eq!(io.kind(), std::io::ErrorKind::AddrInUse);
        let context = io.get_ref().expect("the anyhow error, whole");
        assert_eq!(context.to_string(), "failed to bind gossip");
        let root = context
            .source()
            .and_then(|e| e.downcast_ref::<std::io::Error>())
            .expect("the io::Error under the context");
        assert_eq!(root.kind(), std::io::ErrorKind::AddrInUse);

        let err = Error::from(anyhow::Error::new(std::fmt::Error).context("encoding"));
        assert_eq!(err.kind(), "internal");
        assert_eq!(
            err.to_string(),
            "internal error: encoding: an error occurred when formatting an argument"
        );
        let source = std::error::Error::source(&err).expect("a source");
        assert!(source.source().is_some_and(|e| e.is::<std::fmt::Error>()));

        for err in [err, Error::from(std::io::Error::other("disk"))] {
            let wire = rmp_serde::to_vec(&err).expect("encodes");
            let back: Error = rmp_serde::from_slice(&wire).expect("decodes");
            assert_eq!(back.kind(), err.kind());
            assert_eq!(back.to_string(), err.to_string());
        }
    }
}
