//! In-process tests of what the HTTP API does with bad input: quorum parameters, key lengths,
//! causal contexts, failed conditions, oversized values (with and without Content-Length),
//! unknown routes and wrong methods. Every rejection must be the documented status with a
//! JSON body carrying a string `error` and the `kind` of that status, must not write
//! anything, and must leave the node serving normally.

mod common;

use std::convert::Infallible;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use common::{Http, Reply, TestCluster};
use futures_util::Stream;
use http_body_util::{Full, StreamBody};
use hyper::body::{Body, Frame};
use hyper::header::{ALLOW, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// `max_value_bytes` of the clusters in this file.
const LIMIT: usize = 1024;

async fn cluster() -> TestCluster {
    TestCluster::start_with(3, |c| c.max_value_bytes = LIMIT).await
}

/// Asserts `reply` has `status` and a JSON body with a string `error` and the `kind` (the
/// name of the server's `Error` variant) that status stands for; returns the body.
#[track_caller]
fn assert_error(reply: &Reply, status: StatusCode, what: &str) -> serde_json::Value {
    let kind = match status {
        StatusCode::BAD_REQUEST => "invalid_input",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::PRECONDITION_FAILED => "precondition_failed",
        StatusCode::PAYLOAD_TOO_LARGE => "value_too_large",
        _ => panic!("{what}: no one kind stands for {status}"),
    };
    assert_eq!(reply.status, status, "{what}: {reply:?}");
    assert_eq!(
        reply.headers.get(CONTENT_TYPE).map(HeaderValue::as_bytes),
        Some(&b"application/json"[..]),
        "{what}: error bodies are JSON: {reply:?}"
    );
    let body: serde_json::Value = serde_json::from_slice(&reply.body)
        .unwrap_or_else(|e| panic!("{what}: body is not JSON ({e}): {:?}", reply.body));
    assert!(
        body["error"].as_str().is_some_and(|s| !s.is_empty()),
        "{what}: no string \"error\" field: {body}"
    );
    assert_eq!(body["kind"], kind, "{what}: {body}");
    body
}

/// The node at `via` still takes a normal write and the cluster reads it back everywhere.
async fn assert_still_serves(c: &TestCluster, http: &Http, via: usize, tag: &str) {
    let key = format!("still-serving-{tag}");
    let value = format!("fine after {tag}");
    let put = http
        .put(&format!("{}/kv/{key}?w=3", c.url(via)), value.clone())
        .await;
    assert_eq!(put.status, StatusCode::NO_CONTENT, "{put:?}");
    for reader in 0..c.len() {
        let got = http.get(&format!("{}/kv/{key}", c.url(reader))).await;
        assert_eq!(
            got.status,
            StatusCode::OK,
            "read via node {reader}: {got:?}"
        );
        assert_eq!(got.body, value);
    }
}

/// Sends a request whose one extra header is given as raw bytes (which may be non-ASCII).
async fn send_raw_header(
    method: Method,
    url: &str,
    body: &'static str,
    name: &'static str,
    value: &[u8],
) -> Reply {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let req = Request::builder()
        .method(method)
        .uri(url)
        .header(
            name,
            HeaderValue::from_bytes(value).expect("obs-text is allowed"),
        )
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .expect("valid request");
    let resp = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .expect("answer within 10 s")
        .expect("request succeeds");
    Reply::read(resp).await.expect("whole answer")
}

type ChunkStream = Pin<Box<dyn Stream<Item = Result<Frame<Bytes>, Infallible>> + Send>>;

/// PUTs `chunks` as a streaming body: no Content-Length, so hyper sends it chunked.
///
/// With `finish` the body ends after the last chunk. Without it the body stays open until the
/// answer has arrived, so the server must answer from what it has read so far, and every byte
/// sent has been read by the server by then (no reset can swallow the answer).
async fn put_streaming(url: &str, chunks: Vec<Bytes>, finish: bool) -> Reply {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Bytes>();
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        let chunk = rx.recv().await?;
        Some((Ok(Frame::data(chunk)), rx))
    });
    let body = StreamBody::new(Box::pin(stream) as ChunkStream);
    assert_eq!(
        Body::size_hint(&body).exact(),
        None,
        "a streaming body has no known length, so it goes out chunked"
    );
    let client = Client::builder(TokioExecutor::new()).build_http::<StreamBody<ChunkStream>>();
    let req = Request::builder()
        .method(Method::PUT)
        .uri(url)
        .body(body)
        .expect("valid request");
    let pending = tokio::spawn(client.request(req));
    for chunk in chunks {
        tx.send(chunk).expect("request still being sent");
    }
    let keep_open = if finish {
        drop(tx);
        None
    } else {
        Some(tx)
    };
    let resp = tokio::time::timeout(Duration::from_secs(10), pending)
        .await
        .expect("answer within 10 s")
        .expect("request task")
        .expect("request succeeds");
    let reply = Reply::read(resp).await.expect("whole answer");
    drop(keep_open);
    reply
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_query_parameters_are_400_naming_them_and_write_nothing() {
    let c = cluster().await;
    let http = Http::new();
    let base = c.url(0);
    let cases = [
        (
            Method::PUT,
            "/kv/typo?tll=5",
            "tll",
            "w, pw, ttl, if_absent",
        ),
        (
            Method::PUT,
            "/kv/typo?w=2&W=2",
            "W",
            "w, pw, ttl, if_absent",
        ),
        (Method::DELETE, "/kv/typo?ttl=5", "ttl", "w, pw, if_absent"),
        (Method::GET, "/kv/typo?w=2", "w", "r"),
        (
            Method::GET,
            "/kv?prefix=a&limt=3",
            "limt",
            "prefix, limit, after, r, encoding",
        ),
        (Method::GET, "/watch?prefix=a&r=2", "r", "prefix, encoding"),
    ];
    for (method, path, name, known) in cases {
        let got = http
            .send(method.clone(), &format!("{base}{path}"), "v", &[])
            .await;
        let what = format!("{method} {path}");
        let body = assert_error(&got, StatusCode::BAD_REQUEST, &what);
        let msg = body["error"].as_str().unwrap();
        assert!(
            msg.contains(&format!("{name:?}")) && msg.contains(known),
            "{what}: names the parameter and the known ones: {msg}"
        );
    }
    // Nothing was written, and the known parameters still work.
    assert_eq!(
        http.get(&format!("{base}/kv/typo")).await.status,
        StatusCode::NOT_FOUND
    );
    let put = http.put(&format!("{base}/kv/typo?ttl=5&w=2"), "v").await;
    assert_eq!(put.status, StatusCode::NO_CONTENT);
    assert_still_serves(&c, &http, 0, "unknown-parameters").await;
}

/// `HEAD /kv/{key}` answers as a GET, without a body: `curl -I` checks a key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_answers_as_a_get_without_a_body() {
    let c = cluster().await;
    let http = Http::new();
    let url = format!("{}/kv/headed", c.url(0));
    let missing = http.send(Method::HEAD, &url, "", &[]).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert!(missing.body.is_empty());
    let put = http
        .send(
            Method::PUT,
            &url,
            "twelve bytes",
            &[("content-type", "text/plain")],
        )
        .await;
    assert_eq!(put.status, StatusCode::NO_CONTENT);
    let head = http.send(Method::HEAD, &url, "", &[]).await;
    assert_eq!(head.status, StatusCode::OK);
    assert!(head.body.is_empty(), "{head:?}");
    assert_eq!(head.headers["content-length"], "12");
    assert_eq!(head.headers["content-type"], "text/plain");
    assert!(head.context().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_quorum_parameters_are_400_and_write_nothing() {
    let c = cluster().await;
    let http = Http::new();
    let url = format!("{}/kv/q", c.url(0));
    assert_eq!(
        http.put(&url, "original").await.status,
        StatusCode::NO_CONTENT
    );
    for r in ["0", "4", "abc", "", "-1", "1.5", "99999999999999999999999"] {
        let got = http.get(&format!("{url}?r={r}")).await;
        let body = assert_error(&got, StatusCode::BAD_REQUEST, &format!("GET r={r}"));
        let msg = body["error"].as_str().unwrap();
        assert!(msg.starts_with("r must"), "GET r={r}: names r: {msg}");
    }
    for w in ["0", "4", "x", "", "-1"] {
        let put = http.put(&format!("{url}?w={w}"), "clobbered").await;
        let body = assert_error(&put, StatusCode::BAD_REQUEST, &format!("PUT w={w}"));
        let msg = body["error"].as_str().unwrap();
        assert!(msg.starts_with("w must"), "PUT w={w}: names w: {msg}");
        let del = http.delete(&format!("{url}?w={w}")).await;
        let body = assert_error(&del, StatusCode::BAD_REQUEST, &format!("DELETE w={w}"));
        let msg = body["error"].as_str().unwrap();
        assert!(msg.starts_with("w must"), "DELETE w={w}: names w: {msg}");
    }
    // None of the rejected writes or deletes reached any replica.
    for reader in 0..3 {
        let got = http.get(&format!("{}/kv/q?r=3", c.url(reader))).await;
        assert_eq!(
            (got.status, got.body.as_ref()),
            (StatusCode::OK, b"original".as_ref())
        );
    }
    // The bounds themselves are valid.
    for q in 1..=3 {
        let got = http.get(&format!("{url}?r={q}")).await;
        assert_eq!(got.status, StatusCode::OK, "r={q}");
        let put = http.put(&format!("{url}?w={q}"), format!("w{q}")).await;
        assert_eq!(put.status, StatusCode::NO_CONTENT, "w={q}");
    }
    let del = http.delete(&format!("{url}?w=3")).await;
    assert_eq!(del.status, StatusCode::NO_CONTENT);
    assert_eq!(http.get(&url).await.status, StatusCode::NOT_FOUND);
    assert_still_serves(&c, &http, 0, "quorums").await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_over_1024_bytes_and_empty_keys_are_400() {
    let c = cluster().await;
    let http = Http::new();
    let base = c.url(1);
    // 1024 bytes is the limit, and it is the decoded length that counts.
    let ok_plain = "k".repeat(1024);
    let ok_encoded = "%FF".repeat(1024);
    for key in [&ok_plain, &ok_encoded] {
        let put = http.put(&format!("{base}/kv/{key}"), "at the limit").await;
        assert_eq!(put.status, StatusCode::NO_CONTENT, "{put:?}");
        let got = http.get(&format!("{}/kv/{key}", c.url(2))).await;
        assert_eq!(
            (got.status, got.body.as_ref()),
            (StatusCode::OK, b"at the limit".as_ref())
        );
    }
    let long_plain = "k".repeat(1025);
    let long_encoded = "%FF".repeat(1025);
    for key in [&long_plain, &long_encoded] {
        let url = format!("{base}/kv/{key}");
        for (method, body) in [
            (Method::PUT, "too long"),
            (Method::GET, ""),
            (Method::DELETE, ""),
        ] {
            let what = format!("{method} key of 1025 bytes ({} chars)", key.len());
            let reply = http.send(method, &url, body, &[]).await;
            let body = assert_error(&reply, StatusCode::BAD_REQUEST, &what);
            assert!(
                body["error"].as_str().unwrap().contains("1025"),
                "{what}: the size is reported: {body}"
            );
        }
        let reply = http.get(&format!("{base}/cluster/replicas/{key}")).await;
        assert_error(&reply, StatusCode::BAD_REQUEST, "replicas of a long key");
    }
    for (method, body) in [
        (Method::PUT, "no key"),
        (Method::GET, ""),
        (Method::DELETE, ""),
    ] {
        let what = format!("{method} /kv/");
        let reply = http
            .send(method.clone(), &format!("{base}/kv/"), body, &[])
            .await;
        assert_error(&reply, StatusCode::BAD_REQUEST, &what);
    }
    // `/kv` alone is the listing: GET only.
    for method in [Method::PUT, Method::DELETE] {
        let reply = http
            .send(method.clone(), &format!("{base}/kv"), "", &[])
            .await;
        assert_error(
            &reply,
            StatusCode::METHOD_NOT_ALLOWED,
            &format!("{method} /kv"),
        );
    }
    // Nothing was stored under the 1024-byte prefix of the rejected key.
    let truncated = http.get(&format!("{base}/kv/{ok_plain}")).await;
    assert_eq!(truncated.body, "at the limit");
    assert_still_serves(&c, &http, 1, "keys").await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_contexts_are_400_and_write_nothing() {
    let c = cluster().await;
    let http = Http::new();
    let url = format!("{}/kv/ctx", c.url(2));
    let put = http.put(&url, "v1").await;
    assert_eq!(put.status, StatusCode::NO_CONTENT);
    let ctx = put.context().expect("a PUT returns its context");
    assert!(ctx.len() > 8, "a real context: {ctx:?}");

    let mut bad: Vec<(String, String)> = vec![
        ("garbage".into(), "garbage!".into()),
        ("word".into(), "hello".into()),
        ("padding".into(), format!("{ctx}==")),
        ("appended".into(), format!("{ctx}AAAA")),
    ];
    for cut in 1..=4 {
        bad.push((
            format!("truncated by {cut}"),
            ctx[..ctx.len() - cut].to_string(),
        ));
    }
    // Every single-character change, anywhere in the context.
    for (i, ch) in ctx.char_indices() {
        let other = if ch == 'A' { 'B' } else { 'A' };
        let mut changed = ctx.clone();
        changed.replace_range(i..i + 1, &other.to_string());
        bad.push((format!("char {i} changed"), changed));
    }
    for (what, value) in &bad {
        let put = http.put_ctx(&url, "clobbered", value).await;
        let body = assert_error(&put, StatusCode::BAD_REQUEST, &format!("PUT, {what}"));
        assert!(
            body["error"].as_str().unwrap().contains("context"),
            "PUT, {what}: says what is wrong: {body}"
        );
        let del = http
            .send(Method::DELETE, &url, "", &[("x-ringkv-context", value)])
            .await;
        assert_error(&del, StatusCode::BAD_REQUEST, &format!("DELETE, {what}"));
    }
    // Non-ASCII bytes in the header, alone and around a valid context.
    let mut with_utf8 = ctx.as_bytes().to_vec();
    with_utf8.extend_from_slice("é".as_bytes());
    for (what, value) in [
        ("latin-1 bytes", b"\xff\xfe\xfd".to_vec()),
        ("utf-8 after a valid context", with_utf8),
    ] {
        for method in [Method::PUT, Method::DELETE] {
            let reply = send_raw_header(
                method.clone(),
                &url,
                "clobbered",
                "x-ringkv-context",
                &value,
            )
            .await;
            assert_error(
                &reply,
                StatusCode::BAD_REQUEST,
                &format!("{method}, {what}"),
            );
        }
    }
    // A condition that fails is 412, with the key's current context.
    let put = http
        .put(&format!("{url}?if_absent=true"), "clobbered")
        .await;
    let body = assert_error(&put, StatusCode::PRECONDITION_FAILED, "if_absent, present");
    assert_eq!(body["context"].as_str(), Some(ctx.as_str()), "{body}");
    // Nothing above was written: one value, and the real context still supersedes it.
    for reader in 0..3 {
        let got = http.get(&format!("{}/kv/ctx?r=3", c.url(reader))).await;
        assert_eq!(
            (got.status, got.body.as_ref()),
            (StatusCode::OK, b"v1".as_ref())
        );
    }
    let put = http.put_ctx(&url, "v2", &ctx).await;
    assert_eq!(put.status, StatusCode::NO_CONTENT);
    let got = http.get(&format!("{}/kv/ctx?r=3", c.url(0))).await;
    assert_eq!(
        (got.status, got.body.as_ref()),
        (StatusCode::OK, b"v2".as_ref()),
        "no sibling was created"
    );
    assert_still_serves(&c, &http, 2, "contexts").await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_over_the_limit_are_413_with_content_length() {
    let c = cluster().await;
    let http = Http::new();
    let url = format!("{}/kv/big", c.url(0));
    let exact: Vec<u8> = (0..LIMIT).map(|i| (i % 251) as u8).collect();
    let put = http.put(&url, exact.clone()).await;
    assert_eq!(
        put.status,
        StatusCode::NO_CONTENT,
        "exactly the limit: {put:?}"
    );
    let got = http.get(&format!("{}/kv/big", c.url(1))).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.body.as_ref(), exact.as_slice());

    for size in [LIMIT + 1, 2 * LIMIT, 60 * 1024] {
        let put = http.put(&url, vec![b'x'; size]).await;
        let body = assert_error(
            &put,
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("{size} bytes with Content-Length"),
        );
        assert_eq!(body["limit"], LIMIT, "{body}");
    }
    // The oversized writes left the stored value alone.
    let got = http.get(&format!("{}/kv/big?r=3", c.url(2))).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.body.as_ref(), exact.as_slice());
    assert_still_serves(&c, &http, 0, "content-length").await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_values_over_the_limit_are_413() {
    let c = cluster().await;
    let http = Http::new();
    let url = format!("{}/kv/streamed", c.url(1));

    // Exactly the limit, in uneven chunks, without a Content-Length: accepted.
    let exact: Vec<u8> = (0..LIMIT).map(|i| (i % 253) as u8).collect();
    let chunks: Vec<Bytes> = exact.chunks(300).map(Bytes::copy_from_slice).collect();
    assert!(chunks.len() > 1);
    let put = put_streaming(&url, chunks, true).await;
    assert_eq!(put.status, StatusCode::NO_CONTENT, "{put:?}");
    let got = http.get(&format!("{}/kv/streamed", c.url(2))).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.body.as_ref(), exact.as_slice());

    // One byte over, split across chunks; and a large single chunk. The body is still open
    // when the node answers: it drains what comes (bounded, see `api::drain`) and must answer
    // 413 once the client stops sending, without waiting for a body that never ends.
    let cases: [(&str, Vec<Bytes>); 3] = [
        (
            "limit + 1 in two chunks",
            vec![Bytes::from(vec![b'a'; 600]), Bytes::from(vec![b'b'; 425])],
        ),
        ("one 5000-byte chunk", vec![Bytes::from(vec![b'c'; 5000])]),
        (
            "many small chunks",
            (0..40).map(|_| Bytes::from(vec![b'd'; 64])).collect(),
        ),
    ];
    for (what, chunks) in cases {
        let put = put_streaming(&url, chunks, false).await;
        let body = assert_error(&put, StatusCode::PAYLOAD_TOO_LARGE, what);
        assert_eq!(body["limit"], LIMIT, "{what}: {body}");
    }
    let got = http.get(&format!("{}/kv/streamed?r=3", c.url(0))).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(
        got.body.as_ref(),
        exact.as_slice(),
        "rejected bodies wrote nothing"
    );
    assert_still_serves(&c, &http, 1, "chunked").await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_routes_are_404_and_wrong_methods_405() {
    let c = cluster().await;
    let http = Http::new();
    let base = c.url(0);
    for path in [
        "/nope",
        "/kvx/a",
        "/cluster",
        "/admin/stats/extra",
        "/health/",
    ] {
        let reply = http.get(&format!("{base}{path}")).await;
        assert_error(&reply, StatusCode::NOT_FOUND, &format!("GET {path}"));
    }
    let allowed = |reply: &Reply| -> String {
        reply
            .headers
            .get(ALLOW)
            .unwrap_or_else(|| panic!("405 without an allow header: {reply:?}"))
            .to_str()
            .expect("ASCII allow header")
            .to_string()
    };
    for method in [Method::POST, Method::PATCH, Method::OPTIONS] {
        let reply = http
            .send(method.clone(), &format!("{base}/kv/x"), "v", &[])
            .await;
        assert_error(
            &reply,
            StatusCode::METHOD_NOT_ALLOWED,
            &format!("{method} /kv/x"),
        );
        let allow = allowed(&reply);
        for m in ["GET", "PUT", "DELETE"] {
            assert!(
                allow.contains(m),
                "{method} /kv/x: allow {allow:?} lists {m}"
            );
        }
    }
    for (method, path) in [
        (Method::PUT, "/cluster/members"),
        (Method::POST, "/cluster/members"),
        (Method::DELETE, "/admin/stats"),
        (Method::POST, "/health"),
        (Method::PUT, "/cluster/replicas/x"),
        (Method::DELETE, "/admin/local/x"),
    ] {
        let reply = http
            .send(method.clone(), &format!("{base}{path}"), "", &[])
            .await;
        assert_error(
            &reply,
            StatusCode::METHOD_NOT_ALLOWED,
            &format!("{method} {path}"),
        );
        assert_eq!(allowed(&reply), "GET", "{method} {path}");
    }
    // The rejected POST /kv/x wrote nothing.
    let got = http.get(&format!("{base}/kv/x")).await;
    assert_eq!(got.status, StatusCode::NOT_FOUND);
    assert!(got.context().is_none(), "not even a tombstone");
    assert_still_serves(&c, &http, 0, "routes").await;
    c.shutdown().await;
}
