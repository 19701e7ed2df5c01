//! The README's Python client recipe, run as it is written against an in-process ring: the
//! `python` code blocks of its "Python client" section, in order, with the node's URL as the
//! first argument. Its printed lines must be what the README's comments say.

mod common;

use std::process::Command;

use common::TestCluster;

/// The README's Python blocks, joined.
fn recipe() -> String {
    let readme = include_str!("../README.md");
    let section = readme
        .split("## Python client")
        .nth(1)
        .expect("a Python client section")
        .split("\n## ")
        .next()
        .unwrap_or_default();
    let blocks: Vec<&str> = section
        .split("```python\n")
        .skip(1)
        .map(|b| b.split("```").next().unwrap_or_default())
        .collect();
    assert_eq!(blocks.len(), 2, "the client and its use");
    blocks.join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs python3; .ci/run runs it: cargo test --test python -- --ignored"]
async fn the_readme_python_recipe_runs_against_a_ring() {
    let c = TestCluster::start(3).await;
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let script = dir.join(format!("recipe-{}.py", std::process::id()));
    std::fs::write(&script, recipe()).expect("write the recipe");
    let url = c.url(0);
    let out =
        tokio::task::spawn_blocking(move || Command::new("python3").arg(&script).arg(url).output())
            .await
            .expect("join")
            .expect("python3 runs (install it: apt-get install python3)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(out.status.success(), "python3 failed: {stderr}");
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        ["[b'left', b'right']", "[b'both']", "412", "250", "204 []"],
        "stderr: {stderr}"
    );
    c.shutdown().await;
}
