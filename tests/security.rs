//! A locked ring: API tokens with roles (in process), and the cluster secret (real processes:
//! a node with another secret, or none, never joins and never gets data).

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use common::process::ProcessNode;
use common::{Http, TestCluster, wait_until};
use futures_util::StreamExt;
use hyper::{Method, StatusCode};

/// A private temporary directory for one test's files.
fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "ringkv-security-{tag}-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn rand_suffix() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Writes `text` to `dir/name` with mode 600.
fn private_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    path
}

const TOKENS: &str =
    "read r-secret-token-xyz\nwrite w-secret-token-xyz\nadmin a-secret-token-xyz\n";

async fn send(http: &Http, method: Method, url: &str, token: Option<&str>) -> common::Reply {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth
        .as_deref()
        .map(|a| vec![("authorization", a)])
        .unwrap_or_default();
    http.send(method, url, Bytes::from_static(b"v"), &headers)
        .await
}

/// Every route, as each role and as nobody: 401 (with `WWW-Authenticate: Bearer`) without a
/// valid token, 403 with too small a role, and through otherwise.
#[tokio::test]
async fn every_route_answers_by_role() {
    let dir = temp_dir("roles");
    let tokens = private_file(&dir, "tokens", TOKENS);
    let c = TestCluster::start_with(3, |cfg| cfg.api_tokens = Some(tokens.clone())).await;
    let http = Http::new();
    let base = c.url(0);
    // (method, path, the least role that passes)
    let routes: &[(Method, &str, Option<&str>)] = &[
        (Method::GET, "/health", None),
        (Method::GET, "/ready", None),
        (Method::GET, "/kv/k", Some("read")),
        (Method::GET, "/kv?prefix=", Some("read")),
        (Method::GET, "/cluster/members", Some("read")),
        (Method::GET, "/cluster/replicas/k", Some("read")),
        (Method::GET, "/cluster/status", Some("read")),
        (Method::GET, "/metrics", Some("read")),
        (Method::GET, "/", None),
        (Method::PUT, "/kv/k", Some("write")),
        (Method::DELETE, "/kv/k", Some("write")),
        (Method::GET, "/admin/stats", Some("admin")),
        (Method::GET, "/admin/local/k", Some("admin")),
    ];
    let roles = ["read", "write", "admin"];
    for (method, path, least) in routes {
        let url = format!("{base}{path}");
        for (rank, role) in roles.iter().enumerate() {
            let token = format!("{}-secret-token-xyz", &role[..1]);
            let got = send(&http, method.clone(), &url, Some(&token)).await;
            let allowed = least.is_none_or(|l| rank >= roles.iter().position(|r| r == &l).unwrap());
            if allowed {
                assert!(
                    got.status != StatusCode::UNAUTHORIZED && got.status != StatusCode::FORBIDDEN,
                    "{method} {path} as {role}: {got:?}"
                );
            } else {
                assert_eq!(
                    got.status,
                    StatusCode::FORBIDDEN,
                    "{method} {path} as {role}"
                );
                assert_eq!(got.json()["kind"], "forbidden", "{got:?}");
            }
        }
        for token in [None, Some("not-a-token")] {
            let got = send(&http, method.clone(), &url, token).await;
            if least.is_none() {
                // Open: never refused for want of a token. (Not necessarily 200: `/ready`
                // may still be 503 while peers learn that this node serves.)
                assert!(
                    got.status != StatusCode::UNAUTHORIZED && got.status != StatusCode::FORBIDDEN,
                    "{method} {path} open: {got:?}"
                );
            } else {
                assert_eq!(
                    got.status,
                    StatusCode::UNAUTHORIZED,
                    "{method} {path}: {got:?}"
                );
                assert_eq!(got.json()["kind"], "unauthorized", "{got:?}");
                let www = got
                    .headers
                    .get("www-authenticate")
                    .expect("WWW-Authenticate");
                assert!(www.to_str().unwrap().starts_with("Bearer"), "{www:?}");
            }
        }
    }
    // The write went through with a write token, and reads back with a read token.
    let put = send(
        &http,
        Method::PUT,
        &format!("{base}/kv/k2"),
        Some("w-secret-token-xyz"),
    )
    .await;
    assert_eq!(put.status, StatusCode::NO_CONTENT, "{put:?}");
    let got = send(
        &http,
        Method::GET,
        &format!("{base}/kv/k2"),
        Some("r-secret-token-xyz"),
    )
    .await;
    assert_eq!(got.status, StatusCode::OK, "{got:?}");
    assert_eq!(&got.body[..], b"v");
    // The client library and its token.
    let anonymous = ringkv::Client::new([&base]).unwrap();
    let err = anonymous.get("k2").await.unwrap_err();
    assert_eq!(err.kind(), "unauthorized", "{err}");
    let reader = ringkv::Client::builder([&base])
        .token("r-secret-token-xyz")
        .build()
        .unwrap();
    assert_eq!(
        reader.get("k2").await.unwrap().value().map(|v| &v[..]),
        Some(&b"v"[..])
    );
    let err = reader.put("k3", "x").await.unwrap_err();
    assert_eq!(err.kind(), "forbidden", "{err}");
    c.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A node started with another secret, or with none, against a ring with a secret: it never
/// appears in any member list, and never receives a key; the ring counts the refusals.
#[tokio::test]
async fn nodes_without_the_secret_never_join() {
    let dir = temp_dir("secret");
    let good = private_file(&dir, "good", "the-ring-secret-0123456789abcdef\n");
    let bad = private_file(&dir, "bad", "another-secret-0123456789abcdef\n");
    let good_arg = ["--cluster-secret-file", good.to_str().unwrap()];
    let n1 = ProcessNode::start_with("s1", &[], &good_arg).await;
    let n2 = ProcessNode::start_with("s2", &[n1.gossip], &good_arg).await;
    let seeds: Vec<SocketAddr> = vec![n1.gossip, n2.gossip];
    let http = Http::new();
    wait_until(
        Duration::from_secs(20),
        "the two secured nodes see each other",
        || async {
            let m = n1.members(&http).await;
            m.get("s2").is_some_and(|i| i.alive)
        },
    )
    .await;
    let wrong = ProcessNode::start_with(
        "wrong",
        &seeds,
        &["--cluster-secret-file", bad.to_str().unwrap()],
    )
    .await;
    let none = ProcessNode::start_with("none", &seeds, &[]).await;
    // Traffic the outsiders would get a share of, if they were members.
    for i in 0..50 {
        let got = http.put(&format!("{}/kv/key-{i}", n1.url()), "v").await;
        assert_eq!(got.status, StatusCode::NO_CONTENT, "{got:?}");
    }
    // Poll for a while (the outsiders gossip every 100 ms and dial RPC on every join
    // attempt): neither ever shows up, on any side.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while tokio::time::Instant::now() < deadline {
        for node in [&n1, &n2] {
            let m = node.members(&http).await;
            assert!(!m.contains_key("wrong") && !m.contains_key("none"), "{m:?}");
        }
        for outsider in [&wrong, &none] {
            let m = outsider.members(&http).await;
            assert!(
                !m.contains_key("s1") && !m.contains_key("s2"),
                "{} sees {m:?}",
                outsider.id
            );
            let keys = outsider.counters(&http).await;
            let stats = http
                .get(&format!("{}/admin/stats", outsider.url()))
                .await
                .json();
            assert_eq!(
                stats["store"]["keys"], 0,
                "{} got data: {keys}",
                outsider.id
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // An outsider dialling RPC directly, with a hello that proves nothing, is closed before
    // any request is read.
    for nonce in [None, Some(Bytes::from_static(&[7; 32]))] {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut conn = tokio::net::TcpStream::connect(n1.rpc)
            .await
            .expect("connect");
        let hello = ringkv::rpc::Hello {
            cluster_id: n1.cluster_id.clone(),
            protocol: ringkv::rpc::PROTOCOL_VERSION,
            node: "outsider".into(),
            generation: None,
            nonce: nonce.clone(),
            proof: None,
            protocol_max: None,
        };
        let mut frame = bytes::BytesMut::new();
        ringkv::codec::encode(&hello, &mut frame).unwrap();
        conn.write_all(&frame).await.expect("send hello");
        // A bogus proof for the nonce case, then a request: neither is served.
        let mut rest = bytes::BytesMut::new();
        ringkv::codec::encode(
            &ringkv::rpc::auth::Proof {
                proof: Bytes::from_static(&[1; 32]),
            },
            &mut rest,
        )
        .unwrap();
        let _ = conn.write_all(&rest).await;
        let mut buf = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut buf)).await;
        assert!(
            read.is_ok(),
            "the node closed the connection (nonce {nonce:?})"
        );
    }
    let metrics = http.get(&format!("{}/metrics", n1.url())).await;
    let text = String::from_utf8_lossy(&metrics.body).to_string();
    let handshakes = common::metric(&text, "ringkv_rpc_handshakes_refused_total");
    assert!(handshakes >= 2, "{text}");
    let gossip = common::metric(&text, "ringkv_gossip_datagrams_refused_total");
    for line in text.lines().filter(|l| l.contains("_refused_total ")) {
        eprintln!("s1 after the outsiders tried: {line}");
    }
    assert!(gossip > 0, "no gossip datagram refused:\n{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A secret file readable by others stops the node at start, with exit code 2.
#[tokio::test]
async fn a_secret_readable_by_others_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = temp_dir("perms");
    let path = private_file(&dir, "secret", "the-ring-secret-0123456789abcdef\n");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = common::process::serve_command(
        "perm",
        &[],
        &["--cluster-secret-file", path.to_str().unwrap()],
    )
    .output()
    .expect("run ringkv");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("chmod 600"), "{stderr}");
    assert!(
        !stderr.contains("the-ring-secret"),
        "the secret leaked: {stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A self-signed certificate for localhost and 127.0.0.1, as (cert, key) PEM files.
fn test_certificate(dir: &Path) -> (PathBuf, PathBuf) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
        .expect("certificate");
    let cert = private_file(dir, "cert.pem", &ck.cert.pem());
    let key = private_file(dir, "key.pem", &ck.signing_key.serialize_pem());
    (cert, key)
}

/// With --tls-cert/--tls-key the HTTP port speaks only HTTPS: the client (with the CA),
/// the CLI and a watch (wss) work; plain HTTP and a client without the CA do not.
#[tokio::test]
async fn https_round_trip_with_a_watch() {
    let dir = temp_dir("tls");
    let (cert, key) = test_certificate(&dir);
    let tls = Some((cert.clone(), key.clone()));
    let c = TestCluster::start_with(1, |cfg| {
        cfg.tls = tls.clone();
        cfg.replicas = 1;
        cfg.read_quorum = 1;
        cfg.write_quorum = 1;
    })
    .await;
    let https = format!("https://localhost:{}", c.node(0).http_addr().port());
    let client = ringkv::Client::builder([&https])
        .ca_cert(&cert)
        .build()
        .unwrap();
    let mut watch = client.watch("tls/").await.expect("a watch over wss");
    client
        .put("tls/a", "over TLS")
        .await
        .expect("put over https");
    let got = client.get("tls/a").await.expect("get over https");
    assert_eq!(got.value().map(|v| &v[..]), Some(&b"over TLS"[..]));
    let event = tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .expect("an event within 10 s")
        .expect("the watch is open")
        .expect("an event");
    assert_eq!(event.key(), Some("tls/a"), "{event:?}");
    // The CLI, with --ca-cert.
    // On the blocking pool: the node runs on this test's runtime thread.
    let mut cli = common::process::ringkv();
    cli.args([
        "get",
        "tls/a",
        "--node",
        &https,
        "--ca-cert",
        cert.to_str().unwrap(),
    ]);
    let out = tokio::task::spawn_blocking(move || cli.output())
        .await
        .unwrap()
        .expect("run ringkv get");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.stdout, b"over TLS");
    // Plain HTTP to the HTTPS port gets no HTTP answer; the CLI says what to do instead,
    // and exits 2 (a usage error).
    let plain = Http::new().try_get(&format!("{}/health", c.url(0))).await;
    assert!(plain.is_err(), "plain HTTP answered: {plain:?}");
    let mut cli = common::process::ringkv();
    cli.args(["get", "tls/a", "--node", &c.url(0)]);
    let out = tokio::task::spawn_blocking(move || cli.output())
        .await
        .unwrap()
        .expect("run ringkv get");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("serves HTTPS: use https:// and --ca-cert"),
        "{stderr}"
    );
    // Without the CA (and for another name) the handshake fails.
    assert!(
        ringkv::Client::new([&https]).is_err(),
        "https without --ca-cert"
    );
    let other = ringkv::Client::builder([format!(
        "https://127.0.0.2:{}",
        c.node(0).http_addr().port()
    )])
    .ca_cert(&cert)
    .build()
    .unwrap();
    assert!(
        other.get("tls/a").await.is_err(),
        "a name the certificate lacks"
    );
    c.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// SIGHUP reloads the token file: a new token works at once, a removed one stops working, and
/// a broken file keeps the tokens in force.
#[tokio::test]
async fn sighup_reloads_the_tokens() {
    let dir = temp_dir("sighup");
    let tokens = private_file(&dir, "tokens", "write old-token-0123456789\n");
    let node =
        ProcessNode::start_with("hup", &[], &["--api-tokens", tokens.to_str().unwrap()]).await;
    let http = Http::new();
    let url = format!("{}/cluster/members", node.url());
    let status = |token: &'static str| {
        let (http, url) = (http.clone(), url.clone());
        async move { send(&http, Method::GET, &url, Some(token)).await.status }
    };
    assert_eq!(status("old-token-0123456789").await, StatusCode::OK);
    assert_eq!(
        status("new-token-0123456789").await,
        StatusCode::UNAUTHORIZED
    );
    private_file(&dir, "tokens", "read new-token-0123456789\n");
    let hup = |pid: u32| {
        let out = std::process::Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .output()
            .expect("kill -HUP");
        assert!(out.status.success(), "{out:?}");
    };
    hup(node.pid());
    wait_until(Duration::from_secs(10), "the new token works", || async {
        status("new-token-0123456789").await == StatusCode::OK
    })
    .await;
    assert_eq!(
        status("old-token-0123456789").await,
        StatusCode::UNAUTHORIZED
    );
    // A broken file: the node keeps the tokens it has.
    private_file(&dir, "tokens", "superuser x\n");
    hup(node.pid());
    wait_until(
        Duration::from_secs(10),
        "the node logs the failed reload",
        || async { std::fs::read_to_string(&node.log).is_ok_and(|l| l.contains("not reloaded")) },
    )
    .await;
    assert_eq!(status("new-token-0123456789").await, StatusCode::OK);
    let _ = std::fs::remove_dir_all(&dir);
}
