//! The memory ceiling against the kernel: a ring whose nodes each run in a memory cgroup of
//! 200 MiB, with the default `--max-memory` (75% of the cgroup), is filled with 4 KiB writes
//! until it refuses them. No node is killed, no node's RSS reaches its cgroup's limit, every
//! acknowledged write reads back, every refusal is a 507 `memory_full`, and deleting half the
//! keys lets writes resume.
//!
//! It creates cgroups (v1 memory controller or v2), which needs root: it is `#[ignore]`d in a
//! plain `cargo test`, and `.ci/run` (root on CI machines) runs it with `-- --ignored`. Run by
//! hand: `cargo test --test memory_cgroup -- --ignored --nocapture`.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::process::{ProcessNode, serve_command};
use common::{Http, wait_until};
use hyper::StatusCode;

const CGROUP_BYTES: u64 = 200 << 20;
const NODES: usize = 3;
const VALUE_BYTES: usize = 4096;
const WRITERS: usize = 8;
/// A writer stops after this many refusals in a row: the ring is full.
const FULL_AFTER: usize = 50;
/// The most the fill may take.
const FILL_DEADLINE: Duration = Duration::from_secs(300);

/// A memory cgroup made for one node, removed on drop (after its process is gone).
struct Cgroup {
    dir: PathBuf,
}

impl Cgroup {
    /// A cgroup limited to `bytes` of memory and no swap, under the v2 hierarchy if it has
    /// the memory controller, else under the v1 memory controller.
    fn create(name: &str, bytes: u64) -> Cgroup {
        let v2 = Path::new("/sys/fs/cgroup");
        let v1 = Path::new("/sys/fs/cgroup/memory");
        let has_v2_memory = std::fs::read_to_string(v2.join("cgroup.controllers"))
            .is_ok_and(|c| c.split_whitespace().any(|c| c == "memory"));
        let name = format!("ringkv-test-{}-{name}", std::process::id());
        let write = |file: PathBuf, value: &str| {
            std::fs::write(&file, value)
                .unwrap_or_else(|e| panic!("write {value} to {}: {e}", file.display()))
        };
        if has_v2_memory {
            let _ = std::fs::write(v2.join("cgroup.subtree_control"), "+memory");
            let dir = v2.join(name);
            std::fs::create_dir_all(&dir).expect("mkdir a v2 cgroup: this test needs root");
            write(dir.join("memory.max"), &bytes.to_string());
            let _ = std::fs::write(dir.join("memory.swap.max"), "0");
            Cgroup { dir }
        } else {
            assert!(
                v1.is_dir(),
                "no cgroup memory controller at {} or {}",
                v2.display(),
                v1.display()
            );
            let dir = v1.join(name);
            std::fs::create_dir_all(&dir).expect("mkdir a v1 cgroup: this test needs root");
            write(dir.join("memory.limit_in_bytes"), &bytes.to_string());
            // Swap counts too where the kernel accounts it: the limit is then a hard one.
            let memsw = dir.join("memory.memsw.limit_in_bytes");
            if memsw.exists() {
                write(memsw, &bytes.to_string());
            }
            Cgroup { dir }
        }
    }

    /// `cmd`, run so that its process starts inside this cgroup (a shell moves itself in,
    /// then execs the command).
    fn wrap(&self, cmd: &Command) -> Command {
        let mut sh = Command::new("sh");
        sh.arg("-c")
            .arg(format!(
                "echo $$ > '{}' && exec \"$@\"",
                self.dir.join("cgroup.procs").display()
            ))
            .arg("sh")
            .arg(cmd.get_program())
            .args(cmd.get_args());
        for (k, v) in cmd.get_envs() {
            match v {
                Some(v) => sh.env(k, v),
                None => sh.env_remove(k),
            };
        }
        sh
    }

    /// How often the kernel refused the cgroup a page (v1 `memory.failcnt`, v2 `max` events):
    /// reclaim, or the OOM killer, ran.
    fn failures(&self) -> u64 {
        let read = |f: &str| std::fs::read_to_string(self.dir.join(f)).ok();
        if let Some(n) = read("memory.failcnt") {
            return n.trim().parse().unwrap_or(0);
        }
        read("memory.events")
            .and_then(|e| {
                e.lines()
                    .find_map(|l| l.strip_prefix("oom_kill "))
                    .and_then(|n| n.trim().parse().ok())
            })
            .unwrap_or(0)
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // Its process may take a moment to leave after the kill.
        for _ in 0..50 {
            if std::fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The resident memory of a process, in bytes; `None` once it is gone.
fn rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
}

/// The value written under `key`: 4 KiB that name the key, so a read proves which write it is.
fn value_of(key: &str) -> Vec<u8> {
    let mut v = vec![b'.'; VALUE_BYTES];
    v[..key.len()].copy_from_slice(key.as_bytes());
    v
}

/// What the writers saw.
#[derive(Default)]
struct Fill {
    acked: Vec<String>,
    refusals: u64,
    /// Answers other than 204 and 507 `memory_full`, with what they said.
    others: Vec<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "creates memory cgroups (needs root); .ci/run runs it: cargo test --test memory_cgroup -- --ignored"]
async fn a_ring_in_memory_cgroups_refuses_writes_instead_of_being_killed() {
    let mut cgroups = Vec::new();
    let mut nodes: Vec<ProcessNode> = Vec::new();
    for i in 0..NODES {
        let id = format!("n{}", i + 1);
        let cgroup = Cgroup::create(&id, CGROUP_BYTES);
        let seeds: Vec<_> = nodes.first().map(|n| n.gossip).into_iter().collect();
        let cmd = cgroup.wrap(&serve_command(&id, &seeds, &[]));
        nodes.push(ProcessNode::spawn(cmd, &id).await);
        cgroups.push(cgroup);
    }
    let http = Http::new();
    let urls: Vec<String> = nodes.iter().map(ProcessNode::url).collect();
    wait_until(Duration::from_secs(30), "the ring is ready", || {
        let (http, urls) = (http.clone(), urls.clone());
        async move {
            for u in &urls {
                match http.try_get(&format!("{u}/ready")).await {
                    Ok(r) if r.status == StatusCode::OK => {}
                    _ => return false,
                }
            }
            true
        }
    })
    .await;
    // The default limit is 75% of the cgroup's.
    let limit = CGROUP_BYTES / 100 * 75;
    for u in &urls {
        let stats = http.get(&format!("{u}/admin/stats")).await.json();
        assert_eq!(stats["memory"]["limit"], limit, "{u}: {stats}");
    }

    // Watch every node's RSS while the ring fills.
    let pids: Vec<u32> = nodes.iter().map(ProcessNode::pid).collect();
    let peak = Arc::new(Mutex::new(vec![0u64; NODES]));
    let stop = tokio_util::sync::CancellationToken::new();
    let sampler = {
        let (peak, stop, pids) = (peak.clone(), stop.clone(), pids.clone());
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                for (i, pid) in pids.iter().enumerate() {
                    if let Some(r) = rss(*pid) {
                        let mut p = peak.lock().unwrap();
                        p[i] = p[i].max(r);
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };

    let began = Instant::now();
    let fill = Arc::new(Mutex::new(Fill::default()));
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (http, urls, fill) = (http.clone(), urls.clone(), fill.clone());
            tokio::spawn(async move {
                let mut refused_in_a_row = 0;
                let mut n = 0usize;
                while refused_in_a_row < FULL_AFTER && began.elapsed() < FILL_DEADLINE {
                    n += 1;
                    let key = format!("w{w}-{n:07}");
                    let url = format!("{}/kv/{key}", urls[n % urls.len()]);
                    let reply = http.try_put(&url, value_of(&key)).await;
                    let mut f = fill.lock().unwrap();
                    match reply {
                        Ok(r) if r.status == StatusCode::NO_CONTENT => {
                            f.acked.push(key);
                            refused_in_a_row = 0;
                        }
                        Ok(r)
                            if r.status == StatusCode::INSUFFICIENT_STORAGE
                                && r.json()["kind"] == "memory_full" =>
                        {
                            f.refusals += 1;
                            refused_in_a_row += 1;
                        }
                        Ok(r) => f.others.push(format!(
                            "{key}: {} {}",
                            r.status,
                            String::from_utf8_lossy(&r.body)
                        )),
                        Err(e) => f.others.push(format!("{key}: {e}")),
                    }
                }
            })
        })
        .collect();
    for w in writers {
        w.await.expect("writer");
    }
    let fill_took = began.elapsed();
    stop.cancel();
    sampler.await.expect("sampler");
    let (acked, refusals, others) = {
        let f = fill.lock().unwrap();
        (f.acked.clone(), f.refusals, f.others.clone())
    };
    let peak = peak.lock().unwrap().clone();
    println!(
        "filled in {:.1}s: {} writes acknowledged, {refusals} refused with 507; peak RSS per node {:?} MiB of a {} MiB cgroup (limit {} MiB); kernel refusals {:?}",
        fill_took.as_secs_f64(),
        acked.len(),
        peak.iter().map(|p| p >> 20).collect::<Vec<_>>(),
        CGROUP_BYTES >> 20,
        limit >> 20,
        cgroups.iter().map(Cgroup::failures).collect::<Vec<_>>(),
    );
    assert!(
        others.is_empty(),
        "answers other than 204 and 507: {others:?}"
    );
    assert!(refusals >= FULL_AFTER as u64, "the ring never filled");
    for (i, node) in nodes.iter_mut().enumerate() {
        let exited = node
            .child
            .as_mut()
            .and_then(|g| g.0.try_wait().ok().flatten());
        assert!(exited.is_none(), "{} died: {exited:?}", node.id);
        assert!(
            peak[i] < CGROUP_BYTES,
            "{}'s RSS reached {} of its cgroup's {CGROUP_BYTES}",
            node.id,
            peak[i]
        );
    }

    // Every acknowledged write reads back.
    let mut lost = Vec::new();
    for (i, key) in acked.iter().enumerate() {
        let got = http
            .get(&format!("{}/kv/{key}", urls[i % urls.len()]))
            .await;
        if got.status != StatusCode::OK || got.body != value_of(key) {
            lost.push(format!("{key}: {}", got.status));
        }
    }
    println!("lost acknowledged writes: {}", lost.len());
    assert!(
        lost.is_empty(),
        "{} lost: {:?}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );

    // Deleting half the keys lets writes resume, with no restart.
    let mut deletes = BTreeMap::new();
    for (i, key) in acked.iter().enumerate().filter(|(i, _)| i % 2 == 0) {
        let reply = http
            .delete(&format!("{}/kv/{key}", urls[i % urls.len()]))
            .await;
        *deletes.entry(reply.status.as_u16()).or_insert(0) += 1;
    }
    assert_eq!(deletes.keys().collect::<Vec<_>>(), [&204], "{deletes:?}");
    wait_until(Duration::from_secs(60), "writes are taken again", || {
        let (http, url) = (http.clone(), format!("{}/kv/after-delete", urls[0]));
        async move {
            http.try_put(&url, value_of("after-delete"))
                .await
                .is_ok_and(|r| r.status == StatusCode::NO_CONTENT)
        }
    })
    .await;
    drop(nodes);
}
