//! A full disk: a node whose data dir fills up stops acknowledging writes (503, kind
//! `storage`), keeps serving reads, recovers by itself when space returns, and has lost no
//! acknowledged write when it restarts.
//!
//! It mounts a small tmpfs for the data dir, which needs root: it is `#[ignore]`d in a plain
//! `cargo test`, and `.ci/run` (root on CI machines) runs it with `-- --ignored`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{Http, TestCluster, wait_until};
use hyper::StatusCode;

/// A tmpfs mounted for one test, unmounted (and its mount point removed) on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("disk-full-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mount point");
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .status()
            .expect("mount runs");
        assert!(ok.success(), "mount -t tmpfs failed: this test needs root");
        Tmpfs(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "mounts a tmpfs (needs root); .ci/run runs it: cargo test --test disk_full -- --ignored"]
async fn a_full_disk_refuses_writes_keeps_reads_and_recovers() {
    let fs = Tmpfs::mount("4m");
    let data = fs.path().join("n1");
    // One node that is its own quorum, so its log alone decides what is acknowledged.
    let tweak = {
        let data = data.clone();
        move |cfg: &mut ringkv::Config| {
            cfg.replicas = 1;
            cfg.read_quorum = 1;
            cfg.write_quorum = 1;
            cfg.data_dir = Some(data.clone());
        }
    };
    let mut c = TestCluster::start_with(1, tweak).await;
    let http = Http::new();
    let base = c.url(0);
    let url = |k: &str| format!("{base}/kv/{k}");
    let value = vec![b'x'; 16 * 1024];

    // Fill the disk with writes until one is refused.
    let mut acked = Vec::new();
    let mut refused = None;
    for i in 0..1000 {
        let key = format!("k{i:04}");
        let got = http.put(&url(&key), value.clone()).await;
        match got.status {
            StatusCode::NO_CONTENT => acked.push(key),
            StatusCode::SERVICE_UNAVAILABLE => {
                refused = Some(got);
                break;
            }
            other => panic!("PUT {key}: unexpected {other}: {got:?}"),
        }
    }
    let refused = refused.expect("a 4 MiB disk fills up within 1000 writes of 16 KiB");
    let body = refused.json();
    assert_eq!(body["kind"], "storage", "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("No space left"),
        "{body}"
    );
    assert!(acked.len() > 10, "only {} writes fit", acked.len());

    // Reads go on meanwhile.
    let got = http.get(&url(&acked[0])).await;
    assert_eq!(got.status, StatusCode::OK);
    // And writes keep being refused while the disk is full (not acknowledged, not lost).
    let again = http.put(&url("while-full"), value.clone()).await;
    assert_eq!(again.status, StatusCode::SERVICE_UNAVAILABLE, "{again:?}");

    // Space comes back (the tmpfs grows): the log catches up by itself and writes are
    // acknowledged again, with no restart.
    let remount = Command::new("mount")
        .args(["-o", "remount,size=64m"])
        .arg(fs.path())
        .status()
        .expect("mount runs");
    assert!(remount.success(), "remount with more room");
    wait_until(
        Duration::from_secs(10),
        "writes acknowledged again",
        || async {
            http.try_put(&url("after"), value.clone())
                .await
                .is_ok_and(|r| r.status == StatusCode::NO_CONTENT)
        },
    )
    .await;
    acked.push("after".into());

    // Every acknowledged write survives a restart on the directory.
    c.kill(0).await;
    c.restart(0).await;
    wait_until(Duration::from_secs(20), "restarted node ready", || async {
        http.try_get(&format!("{}/ready", c.url(0)))
            .await
            .is_ok_and(|r| r.status == StatusCode::OK)
    })
    .await;
    let base = c.url(0);
    for key in &acked {
        let got = http.get(&format!("{base}/kv/{key}")).await;
        assert_eq!(got.status, StatusCode::OK, "acknowledged {key} lost");
        assert_eq!(got.body.len(), value.len());
    }
    println!(
        "{} writes acknowledged before the disk filled; refused with {}; all {} back after a restart",
        acked.len() - 1,
        body["error"],
        acked.len()
    );
    c.shutdown().await;
}
