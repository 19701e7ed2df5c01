//! Rolling upgrades and rollbacks across builds, with real processes.
//!
//! A five-node ring of the previous release (`RINGKV_PREVIOUS_BIN`, the binary of the commit
//! `Cargo.toml` records under `[package.metadata.releases]`; `.ci/run` builds it), four
//! clients writing and reading through the nodes that are up, then:
//!
//! 1. each node replaced by this build, one at a time (SIGTERM, start, wait for `/ready`);
//! 2. two nodes rolled back to the previous release, then forward again.
//!
//! Every client request through an up node must succeed, and every acknowledged write must
//! read back at the end. Once with data dirs and a cluster secret (each node restarts on its
//! own data), once in memory without a secret (a restarted node is empty and refills by
//! anti-entropy from nodes of the other build).
//!
//! Without `RINGKV_PREVIOUS_BIN` these tests are ignored: `cargo test` shows them as such.
//! Run them with `RINGKV_PREVIOUS_BIN=path cargo test --test upgrade -- --ignored`.

mod common;

use std::net::SocketAddr;
use std::time::Instant;

use common::process::{ProcessNode, serve_command_at};
use common::rolling::{Clients, all_ready, check, replace};
use common::{Http, TempDir};

/// This build.
const CURRENT: &str = common::process::BIN;

/// One test at a time: each runs a ring of five processes plus clients, and two cores do not
/// hold two of them without gossip falling behind.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn previous_bin() -> String {
    let bin = std::env::var("RINGKV_PREVIOUS_BIN").unwrap_or_default();
    assert!(
        !bin.is_empty() && std::path::Path::new(&bin).is_file(),
        "RINGKV_PREVIOUS_BIN must name the previous release's binary (got {bin:?}); .ci/run \
         builds it from the commit in Cargo.toml's [package.metadata.releases]"
    );
    bin
}

/// Starts node `id` of the binary `bin`. With `dirs`, it keeps its data dir there and the
/// ring has a cluster secret (`dirs/secret`), so the authenticated handshake crosses builds
/// too.
async fn start(bin: &str, id: &str, seeds: &[SocketAddr], dirs: Option<&TempDir>) -> ProcessNode {
    let paths = dirs.map(|d| {
        let secret = d.join("secret");
        if !secret.exists() {
            use std::os::unix::fs::PermissionsExt;
            std::fs::write(&secret, "upgrade-test-secret-0123456789abcdef").expect("secret");
            let mode = std::fs::Permissions::from_mode(0o600);
            std::fs::set_permissions(&secret, mode).expect("chmod");
        }
        let dir = d.join(id);
        (
            dir.to_string_lossy().into_owned(),
            secret.to_string_lossy().into_owned(),
        )
    });
    let mut args = vec![];
    if let Some((dir, secret)) = &paths {
        args.extend([
            "--data-dir",
            dir.as_str(),
            "--cluster-secret-file",
            secret.as_str(),
        ]);
    }
    ProcessNode::spawn(serve_command_at(bin, id, seeds, &args), id).await
}

/// The version each member of `node`'s view gossips (`None` for the previous release).
async fn versions(http: &Http, node: &ProcessNode) -> Vec<Option<String>> {
    let got = http.get(&format!("{}/cluster/members", node.url())).await;
    got.json()["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| m["version"].as_str().map(str::to_string))
        .collect()
}

async fn upgrade_and_roll_back(with_data_dirs: bool) {
    let _one = ONE_AT_A_TIME.lock().await;
    let previous = previous_bin();
    let label = if with_data_dirs { "disk" } else { "memory" };
    let dirs = with_data_dirs.then(|| TempDir::new(&format!("upgrade-{label}")));
    let http = Http::new();
    let mut nodes: Vec<ProcessNode> = Vec::new();
    for i in 0..5 {
        let seeds: Vec<SocketAddr> = nodes.iter().map(|n| n.gossip).collect();
        nodes.push(start(&previous, &format!("u{i}"), &seeds, dirs.as_ref()).await);
    }
    all_ready(&http, &nodes).await;
    let clients = Clients::start(4, &nodes);
    let began = Instant::now();
    // (node, binary) in order: every node forward, two back, the same two forward again.
    let steps: Vec<(usize, &str)> = (0..5)
        .map(|i| (i, CURRENT))
        .chain([(0, previous.as_str()), (1, previous.as_str())])
        .chain([(0, CURRENT), (1, CURRENT)])
        .collect();
    for (step, (i, bin)) in steps.into_iter().enumerate() {
        let dirs = dirs.as_ref();
        replace(&mut nodes, i, &clients, |id, seeds| async move {
            start(bin, &id, &seeds, dirs).await
        })
        .await;
        // What the ring shows of its builds: after every node is upgraded, each member gossips
        // this build's version; after two roll back, two members gossip none.
        if step == 4 || step == 6 {
            let expect_old = if step == 4 { 0 } else { 2 };
            let watcher = &nodes[4];
            common::wait_until(
                common::rolling::READY_TIMEOUT,
                "the ring's versions",
                || async {
                    let v = versions(&http, watcher).await;
                    let old = v.iter().filter(|v| v.is_none()).count();
                    let new = v.iter().flatten().filter(|v| *v == ringkv::compat::VERSION);
                    v.len() == 5 && old == expect_old && new.count() == 5 - expect_old
                },
            )
            .await;
        }
        println!(
            "{label}: step {step}: {} on {}, {} writes acknowledged so far",
            if bin == CURRENT {
                "current"
            } else {
                "previous"
            },
            nodes[i].id,
            clients.acked()
        );
    }
    let outcome = clients.stop().await;
    println!(
        "{label}: 9 replacements (5 forward, 2 back, 2 forward) in {:?}: {} client requests, {} \
         errors, {} acknowledged writes",
        began.elapsed(),
        outcome.requests,
        outcome.errors.len(),
        outcome.acked.len()
    );
    check(&outcome, &nodes).await;
    println!(
        "{label}: all {} acknowledged writes read back: 0 lost",
        outcome.acked.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs RINGKV_PREVIOUS_BIN, the previous release's binary (.ci/run builds it)"]
async fn a_ring_with_data_dirs_upgrades_and_rolls_back_node_by_node_without_an_error() {
    upgrade_and_roll_back(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs RINGKV_PREVIOUS_BIN, the previous release's binary (.ci/run builds it)"]
async fn a_ring_in_memory_upgrades_and_rolls_back_node_by_node_without_an_error() {
    upgrade_and_roll_back(false).await;
}
