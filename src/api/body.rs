//! What a request carries: its key, query parameters, headers and body (read within limits,
//! and drained when refused).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::Request;
use hyper::body::Incoming;
use hyper::header::IF_MATCH;
use percent_encoding::percent_decode_str;
use tracing::debug;

use crate::config::MAX_KEY_BYTES;
use crate::error::{Error, Result};
use crate::version::{Condition, Context};

use crate::http::CONTEXT_HEADER;
use crate::memory::{Meter, Need};

/// Values smaller than this are copied out of hyper's read buffer before they are stored, so a
/// 100-byte value does not pin the whole multi-kilobyte buffer it arrived in.
pub(super) const COMPACT_BELOW: usize = 64 * 1024;

/// Percent-decodes a key and checks its length.
pub(super) fn parse_key(raw: &str) -> Result<Bytes> {
    let key: Vec<u8> = percent_decode_str(raw).collect();
    if key.is_empty() {
        return Err(Error::invalid("empty key"));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(Error::invalid(format!(
            "key of {} bytes exceeds the limit of {MAX_KEY_BYTES} bytes",
            key.len()
        )));
    }
    Ok(Bytes::from(key))
}

/// Refuses a query parameter that is not in `known`, naming it and the known ones.
pub(super) fn known_params(req: &Request<Incoming>, known: &[&str]) -> Result<()> {
    match unknown_param(req.uri().query(), known) {
        None => Ok(()),
        Some(name) => Err(Error::invalid(format!(
            "unknown query parameter {name:?}; this route takes {}",
            known.join(", ")
        ))),
    }
}

/// The first parameter of `query` whose name is not in `known` (empty pairs, as in `a=1&`,
/// are skipped).
pub(super) fn unknown_param<'q>(
    query: Option<&'q str>,
    known: &[&str],
) -> Option<std::borrow::Cow<'q, str>> {
    query?
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| pair.split_once('=').map_or(pair, |(k, _)| k))
        .map(|name| percent_decode_str(name).decode_utf8_lossy())
        .find(|name| !known.contains(&name.as_ref()))
}

/// The value of query parameter `name`, percent-decoded.
pub(super) fn query_param(req: &Request<Incoming>, name: &str) -> Option<String> {
    query_bytes(req, name).map(|v| String::from_utf8_lossy(&v).into_owned())
}

/// The value of query parameter `name`, percent-decoded to bytes (keys and prefixes are
/// binary).
pub(super) fn query_bytes(req: &Request<Incoming>, name: &str) -> Option<Vec<u8>> {
    req.uri().query()?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| percent_decode_str(v).collect())
    })
}

/// Parses a boolean query parameter: absent is false.
pub(super) fn bool_param(req: &Request<Incoming>, name: &str) -> Result<bool> {
    match query_param(req, name).as_deref() {
        None | Some("false") | Some("0") => Ok(false),
        Some("true") | Some("1") | Some("") => Ok(true),
        Some(v) => Err(Error::invalid(format!(
            "{name} must be true or false, got {v:?}"
        ))),
    }
}

/// Parses `?r=`, `?w=` or `?pw=` as a number. Ranges are checked by the coordinator.
pub(super) fn quorum_param(req: &Request<Incoming>, name: &str) -> Result<Option<usize>> {
    match query_param(req, name) {
        None => Ok(None),
        Some(v) => v.parse::<usize>().map(Some).map_err(|_| {
            Error::invalid(format!(
                "{name} must be a number between 1 and N, got {v:?}"
            ))
        }),
    }
}

pub(super) fn context_header(req: &Request<Incoming>) -> Result<Option<Context>> {
    context_in(req, CONTEXT_HEADER)
}

/// Decodes a context carried in header `name`; an HTTP entity tag's quotes are allowed.
pub(super) fn context_in(
    req: &Request<Incoming>,
    name: impl hyper::header::AsHeaderName,
) -> Result<Option<Context>> {
    match req.headers().get(name) {
        None => Ok(None),
        Some(v) => {
            let s = v
                .to_str()
                .map_err(|_| Error::invalid("malformed context: not ASCII"))?;
            Ok(Some(Context::decode(s.trim().trim_matches('"'))?))
        }
    }
}

/// The write's precondition: `?if_absent=true`, or an `if-match` context (not both).
pub(super) fn condition(req: &Request<Incoming>) -> Result<Condition> {
    let if_absent = bool_param(req, "if_absent")?;
    match (if_absent, context_in(req, IF_MATCH)?) {
        (true, Some(_)) => Err(Error::invalid("give if_absent or if-match, not both")),
        (true, None) => Ok(Condition::IfAbsent),
        (false, Some(ctx)) => Ok(Condition::IfMatch(ctx)),
        (false, None) => Ok(Condition::None),
    }
}

/// Reads a request body of at most `limit` bytes with at most one copy: a body that arrives
/// in one piece is kept as it is (copied only when small, so that it does not pin hyper's
/// larger read buffer), and pieces are gathered into one buffer sized from `content-length`.
///
/// A body without a length is checked against the memory limit as it arrives (`meter`): one
/// that would take the node over it is refused (507) while streaming, and the rest drained.
pub(super) async fn read_body(
    mut body: Incoming,
    declared: Option<u64>,
    limit: usize,
    meter: Option<&Meter>,
) -> Result<Bytes> {
    let too_large = |size: u64| Error::ValueTooLarge {
        size,
        limit: limit as u64,
    };
    let mut first: Option<Bytes> = None;
    let mut gathered = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame
            .map_err(|err| Error::invalid(format!("could not read the request body: {err}")))?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        let so_far = first.as_ref().map_or(0, Bytes::len) + gathered.len();
        if so_far + data.len() > limit {
            let seen = (so_far + data.len()) as u64;
            // Free what was gathered before draining the rest, which may take seconds.
            drop((first, gathered, data));
            let size = drain(&mut body, seen, limit).await.unwrap_or(seen);
            return Err(too_large(size));
        }
        if let Some(meter) = meter
            && let Err(full) = meter.admit(data.len() as u64, Need::Values)
        {
            let seen = (so_far + data.len()) as u64;
            drop((first, gathered, data));
            drain(&mut body, seen, limit).await;
            return Err(full);
        }
        if first.is_none() && gathered.is_empty() {
            first = Some(data);
            continue;
        }
        if let Some(head) = first.take() {
            let want = declared
                .map_or(0, |d| d as usize)
                .max(head.len() + data.len());
            gathered.reserve(want);
            gathered.extend_from_slice(&head);
        }
        gathered.extend_from_slice(&data);
    }
    Ok(match first {
        Some(one) if one.len() < COMPACT_BELOW => Bytes::copy_from_slice(&one),
        Some(one) => one,
        None => gathered.freeze(),
    })
}

// Draining a rejected body ("lingering close", as nginx calls it).
//
// A client that sends its whole body before reading the answer (Python's urllib, most
// scripts) is still sending when a 413 goes out early. If the node then closes with unread
// bytes in its socket buffer, the kernel sends a TCP RST instead of a FIN: the client's next
// write fails (BrokenPipe) or the reset discards the 413 it had not read yet (ConnectionReset),
// so it never learns why. Reading the rest of the body and throwing it away before answering
// lets the close be clean. The bounds keep that from costing much: past them the node answers
// and closes anyway, and such a client may see a reset, as it would without draining.

/// A rejected body is drained only if it is at most `DRAIN_LIMIT_FACTOR` times
/// `--max-value-bytes` in all, or `DRAIN_MIN_BYTES`, whichever is larger. The common mistake is
/// a value somewhat over the limit, which this covers; a body announced larger than the bound
/// is refused at once (reading part of it would not prevent the reset). The floor keeps small
/// limits useful (a 4 MiB upload against a 1 MiB limit still sees its 413). Drained bytes are
/// dropped frame by frame, so the cost is bandwidth and a few seconds, never memory.
pub(super) const DRAIN_LIMIT_FACTOR: u64 = 2;

/// See [`DRAIN_LIMIT_FACTOR`].
pub(super) const DRAIN_MIN_BYTES: u64 = 4 * 1024 * 1024;

/// The longest a node drains one rejected body, so a slow client cannot hold a connection
/// (and a task) by trickling bytes. Enough for the largest drained body at the default limit
/// (16 MiB) at 30 Mbit/s; nginx's `lingering_time`, the same bound, is 30 s, but its bodies
/// are not capped by size.
pub(super) const DRAIN_TIME: Duration = Duration::from_secs(5);

/// Draining also stops if no byte arrives for this long: the client has stopped sending (it
/// may be waiting for the answer before sending more), so nothing is left to cause a reset,
/// and it should not wait the whole `DRAIN_TIME` for its 413. Several of Linux's 200 ms
/// minimum retransmission timeouts, so a lossy link does not cut a drain short; nginx's
/// `lingering_timeout` plays this part.
pub(super) const DRAIN_IDLE: Duration = Duration::from_secs(1);

/// The most bytes, in all, of a rejected body that is drained (see [`DRAIN_LIMIT_FACTOR`]).
pub(super) fn drain_bound(limit: usize) -> u64 {
    (limit as u64)
        .saturating_mul(DRAIN_LIMIT_FACTOR)
        .max(DRAIN_MIN_BYTES)
}

/// Whether the client asked for `100 Continue` before sending its body.
pub(super) fn expects_continue(req: &Request<Incoming>) -> bool {
    req.headers()
        .get(hyper::header::EXPECT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("100-continue"))
}

/// Reads and discards the rest of a rejected body of which `seen` bytes were already read,
/// within [`drain_bound`], [`DRAIN_TIME`] and [`DRAIN_IDLE`]. Returns the body's whole size if
/// it ended within them, else `None` (the caller answers and the connection closes with the
/// rest unread).
pub(super) async fn drain(body: &mut Incoming, mut seen: u64, limit: usize) -> Option<u64> {
    let bound = drain_bound(limit);
    let deadline = tokio::time::Instant::now() + DRAIN_TIME;
    while seen <= bound {
        let wait = deadline.min(tokio::time::Instant::now() + DRAIN_IDLE);
        match tokio::time::timeout_at(wait, body.frame()).await {
            Ok(None) => return Some(seen),
            Ok(Some(Ok(frame))) => seen += frame.data_ref().map_or(0, |d| d.len() as u64),
            // The connection broke or a bound passed: nothing more to wait for.
            Ok(Some(Err(_))) | Err(_) => break,
        }
    }
    debug!(seen, bound, "gave up draining a rejected body");
    None
}

/// `?encoding=base64` asks for keys in base64url (binary keys); `utf8`, the default, shows
/// them as text (invalid UTF-8 replaced).
pub(super) fn key_encoding(req: &Request<Incoming>) -> Result<bool> {
    match query_param(req, "encoding").as_deref() {
        None | Some("utf8") => Ok(false),
        Some("base64") => Ok(true),
        Some(other) => Err(Error::invalid(format!(
            "encoding must be utf8 or base64, got {other:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::routes;

    #[test]
    fn unknown_query_parameters_are_found_and_known_ones_pass() {
        let put = routes::PUT_PARAMS;
        assert_eq!(unknown_param(None, put), None);
        assert_eq!(unknown_param(Some(""), put), None);
        assert_eq!(unknown_param(Some("w=2&pw=1&ttl=5&if_absent"), put), None);
        assert_eq!(unknown_param(Some("w=2&&"), put), None);
        assert_eq!(unknown_param(Some("tll=5"), put).as_deref(), Some("tll"));
        assert_eq!(unknown_param(Some("w=2&W=3"), put).as_deref(), Some("W"));
        assert_eq!(unknown_param(Some("r=2"), put).as_deref(), Some("r"));
        assert_eq!(unknown_param(Some("r=2"), routes::GET_PARAMS), None);
        // A percent-encoded name is decoded first.
        assert_eq!(unknown_param(Some("t%74l=5"), put), None);
        assert_eq!(
            unknown_param(
                Some("prefix=a&limit=3&after=x&r=1&encoding=base64"),
                routes::LIST_PARAMS
            ),
            None
        );
        assert_eq!(
            unknown_param(Some("prefix=a&limt=3"), routes::LIST_PARAMS).as_deref(),
            Some("limt")
        );
        assert_eq!(unknown_param(Some("prefix=a"), routes::WATCH_PARAMS), None);
        assert_eq!(
            unknown_param(Some("prefix=a&r=2"), routes::WATCH_PARAMS).as_deref(),
            Some("r")
        );
    }
}
