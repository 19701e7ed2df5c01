//! Tests of the real `ringkv` binary: one OS process per node, real UDP gossip, SIGKILL
//! (processes are started by `common::process`).

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use common::{Http, wait_until};
use futures_util::StreamExt;
use hyper::StatusCode;
use ringkv::codec::{FrameCodec, HEADER_LEN};
use ringkv::rpc::{Hello, Message, PROTOCOL_VERSION, Request};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio_util::codec::FramedRead;

use common::process::{Guard, PORT_ZERO, ProcessCluster, ProcessNode, log_path, ringkv};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_processes_see_each_other_alive_within_5s() {
    let c = ProcessCluster::start(5).await;
    let all: Vec<usize> = (0..5).collect();
    let took = c.converge(&all, &[], Duration::from_secs(5)).await;
    println!("5 processes all list 5 alive members {took:?} after the last start");
    for node in &c.nodes {
        let members = node.members(&c.http).await;
        assert_eq!(members.len(), 5, "{}: {members:?}", node.id);
        for other in &c.nodes {
            let m = &members[&other.id];
            assert!(m.alive, "{} sees {} alive", node.id, other.id);
            assert_eq!(m.http.as_deref(), Some(other.http.to_string().as_str()));
            assert!(m.generation > 0);
        }
    }
    // Each process counts its gossip traffic; five nodes' state fits one small datagram.
    let text = c.http.get(&format!("{}/metrics", c.nodes[0].url())).await;
    let text = String::from_utf8_lossy(&text.body).to_string();
    let sent = common::metric(&text, "ringkv_gossip_bytes_sent_total");
    let datagrams = common::metric(&text, "ringkv_gossip_datagrams_sent_total");
    let received = common::metric(&text, "ringkv_gossip_bytes_received_total");
    let largest = common::metric(&text, "ringkv_gossip_largest_datagram_bytes");
    assert!(datagrams > 0 && sent > 0 && received > 0, "{text}");
    assert!(largest > 0 && largest < 16_384, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_process_is_dead_within_5s_and_its_restart_wins() {
    let mut c = ProcessCluster::start(5).await;
    let all: Vec<usize> = (0..5).collect();
    c.converge(&all, &[], Duration::from_secs(10)).await;
    let victim = 2;
    let victim_id = c.nodes[victim].id.clone();
    let old_generation = c.nodes[0].members(&c.http).await[&victim_id].generation;

    c.nodes[victim].kill();
    let killed_at = Instant::now();
    let others: Vec<usize> = all.iter().copied().filter(|&i| i != victim).collect();
    // Polled by hand (not `wait_until`) to record when each node first reports the death.
    let mut detected: BTreeMap<String, Duration> = BTreeMap::new();
    while detected.len() < others.len() {
        for &i in &others {
            let node = &c.nodes[i];
            if detected.contains_key(&node.id) {
                continue;
            }
            let members = node.members(&c.http).await;
            if members.get(&victim_id).is_some_and(|m| !m.alive) {
                detected.insert(node.id.clone(), killed_at.elapsed());
            }
        }
        assert!(
            killed_at.elapsed() < Duration::from_secs(5),
            "not every node reported {victim_id} dead within 5 s: {detected:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let slowest = detected.values().max().copied().unwrap_or_default();
    println!(
        "SIGKILLed {victim_id} reported dead by every other node after {slowest:?}: {detected:?}"
    );
    assert!(slowest < Duration::from_secs(5));

    // Same id, new ports, new generation: the newest generation wins everywhere.
    let seeds: Vec<SocketAddr> = others.iter().map(|&i| c.nodes[i].gossip).collect();
    c.nodes[victim] = ProcessNode::start(&victim_id, &seeds).await;
    let restarted_at = Instant::now();
    wait_until(
        Duration::from_secs(10),
        "every node to list the restarted node alive at its new generation",
        || c.agrees(&all, &[]),
    )
    .await;
    println!(
        "restarted {victim_id} seen alive everywhere after {:?}",
        restarted_at.elapsed()
    );
    for node in &c.nodes {
        let m = &node.members(&c.http).await[&victim_id];
        assert!(m.alive, "{} sees {victim_id} alive", node.id);
        assert!(
            m.generation > old_generation,
            "{}: generation {} not newer than {old_generation}",
            node.id,
            m.generation
        );
        assert_eq!(
            m.http.as_deref(),
            Some(c.nodes[victim].http.to_string().as_str()),
            "{}: the new address wins",
            node.id
        );
    }

    // A write through one node is readable through every node, the restarted one included.
    for k in 0..5 {
        let key = format!("after-restart-{k}");
        let put = c
            .http
            .put(
                &format!("{}/kv/{key}?w=3", c.nodes[k].url()),
                format!("v{k}"),
            )
            .await;
        assert_eq!(put.status, StatusCode::NO_CONTENT, "{put:?}");
        for node in &c.nodes {
            let got = c.http.get(&format!("{}/kv/{key}", node.url())).await;
            assert_eq!(got.status, StatusCode::OK, "{key} via {}: {got:?}", node.id);
            assert_eq!(got.body, format!("v{k}"));
        }
    }
}

/// A deterministic byte source (xorshift64*), so garbage is the same on every run.
struct Junk(u64);

impl Junk {
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n)
            .map(|_| {
                self.0 ^= self.0 >> 12;
                self.0 ^= self.0 << 25;
                self.0 ^= self.0 >> 27;
                (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
            })
            .collect()
    }
}

/// Reads from `stream` until the peer closes it (EOF or reset); returns what it sent.
async fn read_until_closed(stream: &mut TcpStream, what: &str) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Duration::from_secs(10);
    tokio::time::timeout(deadline, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!("{what}: the node did not close the connection within {deadline:?}")
    });
    got
}

/// Connects to `addr`, sends `bytes` (ignoring a reset mid-write), and waits for the node to
/// close the connection.
async fn send_and_wait_close(addr: SocketAddr, bytes: &[u8], what: &str) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let _ = stream.write_all(bytes).await;
    read_until_closed(&mut stream, what).await
}

fn frame<T: serde::Serialize>(msg: &T) -> BytesMut {
    let mut buf = BytesMut::new();
    ringkv::codec::encode(msg, &mut buf).expect("encode");
    buf
}

/// A hello as the previous release sends it: an array, without a protocol range.
fn hello(cluster_id: &str) -> Hello {
    Hello {
        cluster_id: cluster_id.into(),
        protocol: PROTOCOL_VERSION,
        node: "test".into(),
        generation: None,
        nonce: None,
        proof: None,
        protocol_max: None,
    }
}

/// Opens an RPC connection with a correct handshake and checks the node's answering hello.
async fn handshake(node: &ProcessNode) -> TcpStream {
    let mut stream = TcpStream::connect(node.rpc).await.expect("connect");
    stream
        .write_all(&frame(&hello(&node.cluster_id)))
        .await
        .expect("send hello");
    let mut reader = FramedRead::new(&mut stream, FrameCodec::new(1 << 20));
    let payload = tokio::time::timeout(Duration::from_secs(5), reader.next())
        .await
        .expect("hello back within 5 s")
        .expect("a frame")
        .expect("a valid frame");
    assert!(reader.read_buffer().is_empty(), "only the hello so far");
    let theirs: Hello = ringkv::codec::decode_payload(&payload).expect("a hello");
    assert_eq!(theirs.cluster_id, node.cluster_id);
    assert_eq!(theirs.protocols(), ringkv::compat::Protocols::OURS);
    stream
}

/// A peer whose protocol versions do not meet the node's (a build too new, or too old) is
/// refused before any request: the connection closes with no hello back, the refusal is
/// counted in `/metrics`, logged with both versions, and the node serves on. The build shows
/// in `/metrics` and `/cluster/members`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_speaking_no_common_protocol_is_refused_counted_and_logged() {
    let node = ProcessNode::start_with("vers", &[], &[]).await;
    let http = Http::new();
    let metrics = || async {
        let text = http.get(&format!("{}/metrics", node.url())).await;
        String::from_utf8_lossy(&text.body).to_string()
    };
    let before = common::metric(&metrics().await, "ringkv_rpc_handshakes_refused_total");
    let too_new = Hello::speaking(
        node.cluster_id.clone(),
        "from-the-future".into(),
        None,
        ringkv::compat::Protocols { min: 99, max: 100 },
    );
    let mut bytes = BytesMut::new();
    too_new.encode(&mut bytes).expect("encode");
    let answer = send_and_wait_close(node.rpc, &bytes, "a hello of protocol 99-100").await;
    assert!(answer.is_empty(), "no hello back: {answer:?}");
    wait_until(Duration::from_secs(5), "the refusal counted", || async {
        common::metric(&metrics().await, "ringkv_rpc_handshakes_refused_total") == before + 1
    })
    .await;
    let text = metrics().await;
    let info = format!(
        "ringkv_build_info{{version=\"{}\",protocol=\"{}\"}} 1",
        ringkv::compat::VERSION,
        ringkv::compat::Protocols::OURS
    );
    assert!(text.contains(&info), "{info} in {text}");
    wait_until(Duration::from_secs(5), "the refusal logged", || async {
        let log = std::fs::read_to_string(&node.log).unwrap_or_default();
        log.contains("speaks no protocol version") && log.contains("99-100")
    })
    .await;
    // Still serving, and saying what it is.
    let members = http.get(&format!("{}/cluster/members", node.url())).await;
    assert_eq!(members.status, StatusCode::OK);
    let m = &members.json()["members"][0];
    assert_eq!(m["version"], ringkv::compat::VERSION);
    assert_eq!(m["protocol"], ringkv::compat::Protocols::OURS.encode());
    assert!(members.json()["features"].is_array());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_every_port_never_takes_a_node_down() {
    let c = ProcessCluster::start(3).await;
    let all: Vec<usize> = (0..3).collect();
    c.converge(&all, &[], Duration::from_secs(10)).await;
    let target = &c.nodes[0];
    let before = target.counters(&c.http).await;
    let mut junk = Junk(0x5eed_1234_abcd_ef01);

    // Gossip: random datagrams, an empty one and a maximal one.
    let udp = UdpSocket::bind("127.0.0.1:0").await.expect("udp bind");
    let mut datagrams: Vec<Vec<u8>> = (1..=40).map(|i| junk.bytes(i * 37)).collect();
    datagrams.push(Vec::new());
    datagrams.push(junk.bytes(65_507));
    for d in &datagrams {
        udp.send_to(d, target.gossip).await.expect("udp send");
    }

    // RPC: every one of these connections must be refused and counted.
    let mut bad_rpc = 0u64;
    // Random bytes.
    send_and_wait_close(target.rpc, &junk.bytes(4096), "random bytes").await;
    bad_rpc += 1;
    // A length header far over the maximum frame size.
    let mut huge = vec![0xff; 4];
    huge.extend_from_slice(&[0; 4]);
    let answer = send_and_wait_close(target.rpc, &huge, "huge length header").await;
    assert!(answer.is_empty(), "no hello for a bad first frame");
    bad_rpc += 1;
    // A hello from another cluster.
    let answer = send_and_wait_close(target.rpc, &frame(&hello("other")), "wrong cluster").await;
    assert!(answer.is_empty(), "no hello back to another cluster");
    bad_rpc += 1;
    // After a correct handshake: a well-formed request frame with a wrong CRC.
    let mut stream = handshake(target).await;
    let mut bad_crc = frame(&Message::Request {
        id: 1,
        body: Request::Read {
            key: bytes::Bytes::from_static(b"k"),
        },
        trace: None,
    });
    bad_crc[HEADER_LEN - 1] ^= 0x5a;
    let _ = stream.write_all(&bad_crc).await;
    let answer = read_until_closed(&mut stream, "bad CRC").await;
    assert!(answer.is_empty(), "a corrupt request gets no answer");
    bad_rpc += 1;
    // After a correct handshake: a frame with a correct CRC whose payload is not a message.
    let mut stream = handshake(target).await;
    let payload = b"\xc1\xc1 not msgpack";
    let mut undecodable = (payload.len() as u32).to_be_bytes().to_vec();
    undecodable.extend_from_slice(&crc32fast::hash(payload).to_be_bytes());
    undecodable.extend_from_slice(payload);
    let _ = stream.write_all(&undecodable).await;
    read_until_closed(&mut stream, "undecodable payload").await;
    bad_rpc += 1;
    // After a correct handshake: a huge length header.
    let mut stream = handshake(target).await;
    let _ = stream.write_all(&huge).await;
    read_until_closed(&mut stream, "huge length after hello").await;
    bad_rpc += 1;

    // HTTP: junk, a broken request line, oversized headers, and a request cut short.
    let http_junk: Vec<Vec<u8>> = vec![
        junk.bytes(2048),
        b"\x00\x01\x02 / HTTP/1.1\r\n\r\n".to_vec(),
        b"GET /health HTTP/9.9\r\nHost: x\r\n\r\n".to_vec(),
        format!(
            "GET /health HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
            "a".repeat(512 * 1024)
        )
        .into_bytes(),
        b"PUT /kv/x HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n".to_vec(),
        b"PUT /kv/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n".to_vec(),
    ];
    for (i, bytes) in http_junk.iter().enumerate() {
        let answer = send_and_wait_close(target.http, bytes, &format!("http junk {i}")).await;
        assert!(
            answer.is_empty() || answer.starts_with(b"HTTP/1.1 4"),
            "http junk {i}: answered {:?}",
            String::from_utf8_lossy(&answer[..answer.len().min(80)])
        );
    }
    {
        // A request cut off in the middle of its headers, then closed by the client.
        let mut stream = TcpStream::connect(target.http).await.expect("connect");
        stream
            .write_all(b"GET /health HTTP/1.1\r\nHo")
            .await
            .expect("write");
    }

    // The node is still up and fully functional.
    let health = c.http.get(&format!("{}/health", target.url())).await;
    assert_eq!(health.status, StatusCode::OK);
    let put = c
        .http
        .put(&format!("{}/kv/survivor?w=3", target.url()), "still here")
        .await;
    assert_eq!(put.status, StatusCode::NO_CONTENT, "{put:?}");
    for node in &c.nodes {
        let got = c.http.get(&format!("{}/kv/survivor?r=3", node.url())).await;
        assert_eq!(
            (got.status, got.body.as_ref()),
            (StatusCode::OK, b"still here".as_ref()),
            "via {}",
            node.id
        );
    }
    assert!(c.agrees(&all, &[]).await, "gossip still works");

    let counted = |v: &serde_json::Value, k: &str| v[k].as_u64().unwrap_or_else(|| panic!("{k}"));
    let rejected = |before: &serde_json::Value, after: &serde_json::Value, k: &str| {
        counted(after, k) - counted(before, k)
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    let after = loop {
        let after = target.counters(&c.http).await;
        if rejected(&before, &after, "rpc_frames_rejected") >= bad_rpc
            && rejected(&before, &after, "gossip_datagrams_rejected") >= 1
        {
            break after;
        }
        assert!(
            Instant::now() < deadline,
            "{bad_rpc} bad rpc connections and {} bad datagrams not counted: before {before}, after {after}",
            datagrams.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    println!("counters after the garbage: {after}");
    // Good traffic was never counted as bad, on any node.
    for node in &c.nodes[1..] {
        assert_eq!(
            counted(&node.counters(&c.http).await, "rpc_frames_rejected"),
            0
        );
    }
}

/// Runs `ringkv` with `args` and `env`, expecting it to exit on its own; returns its exit
/// code and stderr.
async fn run_to_exit(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let log = log_path("exit");
    let mut cmd = ringkv();
    cmd.args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"));
    let mut child = Guard(cmd.spawn().expect("spawn ringkv"));
    let mut status = None;
    wait_until(Duration::from_secs(10), "ringkv to exit", || {
        status = child.0.try_wait().expect("try_wait");
        std::future::ready(status.is_some())
    })
    .await;
    let stderr = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    (status.and_then(|s| s.code()), stderr)
}

/// A port another process holds: exit 2, naming the flag and the address, for each of the
/// three listeners.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_port_exits_2_naming_the_flag_and_the_address() {
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let (taken_tcp, taken_udp) = (
        tcp.local_addr().unwrap().to_string(),
        udp.local_addr().unwrap().to_string(),
    );
    for (flag, taken) in [
        ("--http", &taken_tcp),
        ("--rpc", &taken_tcp),
        ("--gossip", &taken_udp),
    ] {
        let mut args = vec!["serve", "--id", "busy"];
        for (f, v) in PORT_ZERO.chunks(2).map(|c| (c[0], c[1])) {
            args.extend([f, if f == flag { taken.as_str() } else { v }]);
        }
        let (code, stderr) = run_to_exit(&args, &[]).await;
        assert_eq!(code, Some(2), "{flag} {taken}: {stderr}");
        assert!(
            stderr.contains(&format!("{flag} {taken}")) && stderr.contains("already in use"),
            "{flag}: {stderr}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_configuration_exits_2_naming_the_flag() {
    // Port 0 everywhere, so a configuration wrongly accepted cannot collide with anything.
    let ports = PORT_ZERO;
    /// Extra arguments, extra environment, and the flag the error must name.
    struct Case {
        args: &'static [&'static str],
        env: &'static [(&'static str, &'static str)],
        flag: &'static str,
    }
    let cases = [
        Case {
            args: &["--read-quorum", "4"],
            env: &[],
            flag: "--read-quorum",
        },
        Case {
            args: &["--write-quorum", "0"],
            env: &[],
            flag: "--write-quorum",
        },
        Case {
            args: &["--no-such-flag"],
            env: &[],
            flag: "--no-such-flag",
        },
        Case {
            args: &[],
            env: &[("RINGKV_READ_QUORUM", "0")],
            flag: "--read-quorum",
        },
        Case {
            args: &["--replicas", "2"],
            env: &[("RINGKV_WRITE_QUORUM", "3")],
            flag: "--write-quorum",
        },
    ];
    for Case {
        args: extra,
        env,
        flag,
    } in cases
    {
        let mut args = vec!["serve", "--id", "x"];
        args.extend_from_slice(&ports);
        args.extend_from_slice(extra);
        let (code, stderr) = run_to_exit(&args, env).await;
        assert_eq!(code, Some(2), "{args:?} {env:?}: stderr {stderr:?}");
        assert!(
            stderr.contains(flag),
            "{args:?} {env:?}: the message names {flag}: {stderr:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environment_variables_configure_a_node() {
    let mut cmd = ringkv();
    cmd.arg("serve").envs([
        ("RINGKV_ID", "env-node"),
        ("RINGKV_HTTP", "127.0.0.1:0"),
        ("RINGKV_RPC", "127.0.0.1:0"),
        ("RINGKV_GOSSIP", "127.0.0.1:0"),
        ("RINGKV_REPLICAS", "1"),
        ("RINGKV_READ_QUORUM", "1"),
        ("RINGKV_WRITE_QUORUM", "1"),
        ("RINGKV_MAX_VALUE_BYTES", "16"),
    ]);
    let node = ProcessNode::spawn(cmd, "env-node").await;
    assert_eq!(node.id, "env-node");
    let http = Http::new();
    wait_until(
        Duration::from_secs(5),
        "the node to list itself alive",
        || async {
            let members = node.members(&http).await;
            members.len() == 1 && members.get("env-node").is_some_and(|m| m.alive)
        },
    )
    .await;
    let members = node.members(&http).await;
    assert_eq!(
        members["env-node"].http.as_deref(),
        Some(node.http.to_string().as_str())
    );
    let stats = http.get(&format!("{}/admin/stats", node.url())).await;
    assert_eq!(stats.json()["id"], "env-node");
    // N=R=W=1 from the environment: a lone node takes writes; the value limit is 16 bytes.
    let url = format!("{}/kv/e", node.url());
    let put = http.put(&url, "0123456789abcdef").await;
    assert_eq!(put.status, StatusCode::NO_CONTENT, "{put:?}");
    let got = http.get(&url).await;
    assert_eq!(
        (got.status, got.body.as_ref()),
        (StatusCode::OK, b"0123456789abcdef".as_ref())
    );
    let put = http.put(&url, "0123456789abcdefX").await;
    assert_eq!(put.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(put.json()["limit"], 16);
}

/// SIGTERM stops a node gracefully: it exits 0 within its stop deadline, and the others stop
/// routing to it (they report it dead) without waiting for the failure detector's timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_zero_after_a_graceful_stop() {
    let a = ProcessNode::start("term-a", &[]).await;
    let mut b = ProcessNode::start("term-b", &[a.gossip]).await;
    let http = Http::new();
    let alive_seen_by_a = || async {
        let got = http
            .get(&format!("http://{}/cluster/members", a.http))
            .await;
        got.json()["members"]
            .as_array()
            .map_or(0, |ms| ms.iter().filter(|m| m["status"] == "alive").count())
    };
    wait_until(Duration::from_secs(10), "both alive", || async {
        alive_seen_by_a().await == 2
    })
    .await;
    let mut guard = b.child.take().expect("running");
    let pid = guard.0.id().to_string();
    let sent = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill runs");
    assert!(sent.success());
    // Peers learn it is stopping from gossip, while it still serves.
    wait_until(Duration::from_secs(10), "b reported down by a", || async {
        alive_seen_by_a().await == 1
    })
    .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = guard.0.try_wait().expect("wait") {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no exit within 20 s of SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status.code(), Some(0), "graceful stop exits 0");
    drop(guard);
    drop(a);
}

/// `--log-format json` writes one JSON object per log line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_per_line() {
    let mut cmd = ringkv();
    cmd.env("RUST_LOG", "info")
        .args(["serve", "--id", "json-logs", "--log-format", "json"])
        .args(PORT_ZERO);
    let node = ProcessNode::spawn(cmd, "json-logs").await;
    // The node logs its addresses before it prints the listening line we waited for.
    let log = std::fs::read_to_string(&node.log).expect("log file");
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}")))
        .collect();
    let listening = lines
        .iter()
        .find(|v| v["fields"]["message"] == "ringkv node listening")
        .unwrap_or_else(|| panic!("no listening event in {log}"));
    assert_eq!(listening["fields"]["id"], "json-logs");
    assert_eq!(listening["level"], "INFO");
    assert_eq!(listening["fields"]["http"], node.http.to_string());
}

/// A request's id and coordinator appear in the logs of every replica it reached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_id_follows_the_request_through_the_replicas_logs() {
    let mut nodes: Vec<ProcessNode> = Vec::new();
    for i in 0..3 {
        let mut cmd = ringkv();
        cmd.env("RUST_LOG", "ringkv=debug")
            .args([
                "serve",
                "--id",
                &format!("t{}", i + 1),
                "--log-format",
                "json",
            ])
            .args(PORT_ZERO);
        if let Some(first) = nodes.first() {
            cmd.args(["--seeds", &first.gossip.to_string()]);
        }
        nodes.push(ProcessNode::spawn(cmd, &format!("trace-t{}", i + 1)).await);
    }
    let http = Http::new();
    wait_until(
        Duration::from_secs(20),
        "three members alive everywhere",
        || async {
            for node in &nodes {
                let members = node.members(&http).await;
                if members.len() != 3 || !members.values().all(|m| m.alive) {
                    return false;
                }
            }
            true
        },
    )
    .await;
    let put = http
        .send(
            hyper::Method::PUT,
            &format!("{}/kv/traced-key", nodes[0].url()),
            "v",
            &[("x-request-id", "trace-me-42")],
        )
        .await;
    assert_eq!(put.status, hyper::StatusCode::NO_CONTENT, "{put:?}");
    assert_eq!(put.headers["x-request-id"], "trace-me-42");
    let replicas = http
        .get(&format!("{}/cluster/replicas/traced-key", nodes[0].url()))
        .await
        .json();
    let coordinator = replicas["replicas"][0]["id"].as_str().unwrap().to_string();
    // Every other replica served a call for this request, logged under its id and the
    // coordinator's name.
    for node in nodes.iter().filter(|n| n.id != coordinator) {
        wait_until(
            Duration::from_secs(10),
            "the replica's log line",
            || async {
                let log = std::fs::read_to_string(&node.log).unwrap_or_default();
                log.lines()
                    .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                    .any(|v| {
                        v["span"]["request"] == "trace-me-42"
                            && v["span"]["coordinator"] == coordinator.as_str()
                    })
            },
        )
        .await;
    }
    // Without a request id the node makes one up.
    let got = http.get(&format!("{}/kv/traced-key", nodes[1].url())).await;
    let id = got.headers["x-request-id"].to_str().unwrap();
    assert!(id.starts_with("t2-"), "{id}");
}

/// Listen versus advertise: a node bound to a wildcard address with nothing to advertise exits
/// with code 2 naming the flag to set; with `--advertise-*` (host names accepted) its members
/// list shows the advertised addresses, not the bound ones.
#[tokio::test]
async fn nodes_advertise_what_peers_can_reach() {
    for (flag, advertise) in [
        ("--http", "--advertise-http"),
        ("--rpc", "--advertise-rpc"),
        ("--gossip", "--advertise-gossip"),
    ] {
        let mut cmd = ringkv();
        cmd.args(["serve", "--id", "wild"]);
        for (f, _) in [("--http", ()), ("--rpc", ()), ("--gossip", ())] {
            let addr = if f == flag {
                "0.0.0.0:0"
            } else {
                "127.0.0.1:0"
            };
            cmd.args([f, addr]);
        }
        let out = tokio::task::spawn_blocking(move || cmd.output())
            .await
            .unwrap()
            .expect("run ringkv serve");
        assert_eq!(out.status.code(), Some(2), "{flag}: {out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(advertise), "{flag}: {stderr}");
    }
    let node = ProcessNode::start_with(
        "adv",
        &[],
        &[
            "--advertise-http",
            "localhost:65001",
            "--advertise-rpc",
            "localhost:65002",
        ],
    )
    .await;
    let http = Http::new();
    let members = node.members(&http).await;
    let me = members.get("adv").expect("the node lists itself");
    assert_eq!(me.http.as_deref(), Some("127.0.0.1:65001"), "{members:?}");
}

/// Seeds may be host names: one that resolves is joined through; while none resolves (its
/// container is not up yet), the node waits and retries, answering `/health` 200 and
/// `/ready` 503 with the seeds it waits for, instead of exiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeds_may_be_names_and_a_name_that_does_not_resolve_is_waited_for() {
    let a = ProcessNode::start("name-a", &[]).await;
    let seed = format!("localhost:{}", a.gossip.port());
    let b = ProcessNode::start_with(
        "name-b",
        &[],
        &["--seeds", &seed, "--cluster-id", &a.cluster_id],
    )
    .await;
    let http = Http::new();
    wait_until(
        Duration::from_secs(20),
        "a and b see each other by a named seed",
        || async {
            let (ma, mb) = (a.members(&http).await, b.members(&http).await);
            ma.get("name-b").is_some_and(|m| m.alive) && mb.get("name-a").is_some_and(|m| m.alive)
        },
    )
    .await;

    // `.invalid` never resolves (RFC 2606): the node waits, and says so.
    let missing = "ringkv-seed.invalid:7001";
    let log = log_path("name-c");
    let mut cmd = ringkv();
    cmd.args(["serve", "--id", "name-c", "--seeds", missing])
        .args(PORT_ZERO)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"));
    let mut c = Guard(cmd.spawn().expect("spawn ringkv"));
    let mut addr = None;
    wait_until(
        Duration::from_secs(20),
        "c logs that it waits for its seed",
        || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            addr = text
                .lines()
                .find(|l| l.contains("waiting for a seed to resolve"))
                .and_then(|l| l.split("http=").nth(1))
                .and_then(|rest| rest.split_whitespace().next())
                .map(str::to_string);
            std::future::ready(addr.is_some())
        },
    )
    .await;
    let url = format!("http://{}", addr.expect("logged"));
    assert_eq!(
        http.get(&format!("{url}/health")).await.status,
        StatusCode::OK
    );
    let ready = http.get(&format!("{url}/ready")).await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE, "{ready:?}");
    let detail = ready.json()["conditions"][0]["detail"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(detail.contains(missing), "{detail}");
    assert!(
        c.0.try_wait().expect("try_wait").is_none(),
        "c exited: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
}
