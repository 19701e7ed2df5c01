//! The status page (`GET /`) as a browser sees it: headless Chromium renders it against a live
//! 5-node in-process cluster, the test reads the rendered DOM (`--dump-dom`) through the page's
//! stable hooks (`data-node`, `data-status`, `#summary`, `#ring`, `data-total`) and takes
//! screenshots to `target/status-page.png` and `target/status-page-dead.png`.
//!
//! It needs Chromium (`chromium`, `chromium-browser` or `google-chrome` on PATH), so it is
//! `#[ignore]`d: `cargo test` lists it as ignored, never as passed, and `.ci/run` installs
//! Chromium and runs it with `cargo test --test status_page -- --ignored`. Run that way without
//! Chromium, it fails and says why.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Http, TestCluster, wait_until};
use hyper::StatusCode;

/// Keys written before the first render, so the page has something to count.
const KEYS: u64 = 40;
/// Replicas per key (the default N).
const N: u64 = 3;
/// How long one Chromium run may take.
const BROWSER_TIMEOUT: Duration = Duration::from_secs(60);

/// The first browser binary found on PATH.
fn find_chromium() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .flat_map(|name| std::env::split_paths(&path).map(move |dir| dir.join(name)))
        .find(|p| p.is_file())
}

/// Runs headless Chromium on `url` with `args` and returns its stdout. Each run gets a fresh
/// profile directory, so runs never contend for a profile lock.
async fn chromium(browser: &Path, url: &str, args: &[&str]) -> String {
    static SEQ: AtomicUsize = AtomicUsize::new(0);
    let profile = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "status-page-profile-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let child = tokio::process::Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--hide-scrollbars",
            "--virtual-time-budget=3000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", browser.display()));
    let out = tokio::time::timeout(BROWSER_TIMEOUT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("chromium {args:?} took more than {BROWSER_TIMEOUT:?}"))
        .expect("chromium output");
    let _ = std::fs::remove_dir_all(&profile);
    assert!(
        out.status.success(),
        "chromium {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("the DOM is UTF-8")
}

/// The page's DOM after about 3 s of (virtual) time: the first polls have rendered.
async fn render(browser: &Path, url: &str) -> Page {
    let mut dom = chromium(browser, url, &["--dump-dom"]).await;
    // The script's templates look like markup: keep only the rendered document.
    while let Some(start) = dom.find("<script") {
        let end = dom[start..]
            .find("</script>")
            .map_or(dom.len(), |e| start + e + 9);
        dom.replace_range(start..end, "");
    }
    Page { dom }
}

/// A 1200x900 screenshot of the page at `target/<name>`; returns its path.
async fn screenshot(browser: &Path, url: &str, name: &str) -> PathBuf {
    let target = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("CARGO_TARGET_TMPDIR is inside the target directory");
    let path = target.join(name);
    let _ = std::fs::remove_file(&path);
    let shot = format!("--screenshot={}", path.display());
    chromium(browser, url, &[&shot, "--window-size=1200,900"]).await;
    let png = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    let dim = |at: usize| u32::from_be_bytes(png[at..at + 4].try_into().expect("4 bytes"));
    assert_eq!((dim(16), dim(20)), (1200, 900), "screenshot size");
    println!("status page screenshot: {}", path.display());
    path
}

/// Serialized HTML as Chromium dumps it, scripts removed: attribute values always
/// double-quoted, `"` escaped.
struct Page {
    dom: String,
}

impl Page {
    /// The attributes of every start tag `<name ...>` in `html`.
    fn tags(html: &str, name: &str) -> Vec<HashMap<String, String>> {
        let open = format!("<{name}");
        let mut out = Vec::new();
        let mut rest = html;
        while let Some(at) = rest.find(&open) {
            rest = &rest[at + open.len()..];
            if !rest.starts_with([' ', '>', '/']) {
                continue; // a longer tag name
            }
            let mut attrs = HashMap::new();
            loop {
                rest = rest.trim_start();
                if rest.is_empty() || rest.starts_with('>') || rest.starts_with("/>") {
                    break;
                }
                let end = rest.find(['=', ' ', '>']).unwrap_or(rest.len());
                let key = rest[..end].to_string();
                rest = &rest[end..];
                let mut value = String::new();
                if let Some(v) = rest.strip_prefix("=\"") {
                    let close = v.find('"').expect("closing quote");
                    value = v[..close].replace("&quot;", "\"").replace("&amp;", "&");
                    rest = &v[close + 1..];
                }
                attrs.insert(key, value);
            }
            out.push(attrs);
        }
        out
    }

    /// The text right after the start tag that contains `marker`.
    fn text_after(&self, marker: &str) -> Option<&str> {
        let at = self.dom.find(marker)?;
        let start = at + self.dom[at..].find('>')? + 1;
        let end = start + self.dom[start..].find('<')?;
        Some(self.dom[start..end].trim())
    }

    /// True once the page rendered a successful poll.
    fn loaded(&self) -> bool {
        Self::tags(&self.dom, "body")
            .first()
            .is_some_and(|b| b.get("data-loaded").map(String::as_str) == Some("1"))
    }

    /// The node table: id -> status.
    fn rows(&self) -> BTreeMap<String, String> {
        Self::tags(&self.dom, "tr")
            .into_iter()
            .filter_map(|t| Some((t.get("data-node")?.clone(), t.get("data-status")?.clone())))
            .collect()
    }

    /// The arc paths of `#ring`: node id -> (statuses, largest number of arcs in one path).
    fn ring(&self) -> BTreeMap<String, (BTreeSet<String>, usize)> {
        let start = self.dom.find("<svg id=\"ring\"").expect("the #ring svg");
        let end = start + self.dom[start..].find("</svg>").expect("</svg>");
        let mut out: BTreeMap<String, (BTreeSet<String>, usize)> = BTreeMap::new();
        for path in Self::tags(&self.dom[start..end], "path") {
            let is_arc = path
                .get("class")
                .is_some_and(|c| c.split(' ').any(|c| c == "arc"));
            let (Some(node), true) = (path.get("data-node"), is_arc) else {
                continue;
            };
            let arcs = path.get("d").map_or(0, |d| d.matches('A').count());
            let entry = out.entry(node.clone()).or_default();
            entry.0.extend(path.get("data-status").cloned());
            entry.1 = entry.1.max(arcs);
        }
        out
    }

    fn summary(&self) -> &str {
        self.text_after("id=\"summary\"").expect("#summary")
    }

    /// A footer total (`data-total="keys"` …) as a number; `None` if it shows "–".
    fn total(&self, name: &str) -> Option<f64> {
        let text = self
            .text_after(&format!("data-total=\"{name}\""))
            .unwrap_or_else(|| panic!("total {name}"));
        text.replace(',', "").parse().ok()
    }

    /// True if the error banner is showing.
    fn error_shown(&self) -> bool {
        Self::tags(&self.dom, "div").iter().any(|d| {
            d.get("id").map(String::as_str) == Some("error")
                && d.get("class").is_some_and(|c| c.contains("show"))
        })
    }
}

/// Sum of `stats.keys` over the members of a `/cluster/status` answer.
fn keys_in(status: &serde_json::Value) -> u64 {
    status["members"]
        .as_array()
        .expect("members")
        .iter()
        .filter_map(|m| m["stats"]["keys"].as_u64())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Chromium; .ci/run installs it and runs: cargo test --test status_page -- --ignored"]
async fn status_page_shows_the_ring_and_a_dead_node() {
    let browser = find_chromium().expect(
        "no chromium, chromium-browser or google-chrome on PATH (apt-get install chromium)",
    );
    let started = Instant::now();
    let mut c = TestCluster::start(5).await;
    let http = Http::new();
    for i in 0..KEYS {
        let put = http
            .put(&format!("{}/kv/page-{i}", c.url(i as usize % 5)), "v")
            .await;
        assert_eq!(put.status, StatusCode::NO_CONTENT);
    }
    let status_url = format!("{}/cluster/status", c.url(0));
    wait_until(
        Duration::from_secs(10),
        "every replica of every key to be counted",
        || async { keys_in(&http.get(&status_url).await.json()) == KEYS * N },
    )
    .await;
    let status = http.get(&status_url).await.json();
    let arcs_of: BTreeMap<String, usize> = status["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| {
            let id = m["id"].as_str().expect("id").to_string();
            (id, m["arcs"].as_array().expect("arcs").len())
        })
        .collect();

    let url = format!("{}/", c.url(0));
    let root = http.get(&url).await;
    assert_eq!(root.status, StatusCode::OK);
    let ctype = root.headers["content-type"].to_str().expect("ascii");
    assert!(ctype.starts_with("text/html"), "content-type {ctype}");

    // All alive: five rows, five nodes' arcs on the ring, the counts of the endpoint.
    let page = render(&browser, &url).await;
    assert!(
        page.loaded(),
        "the page never rendered a poll:\n{}",
        page.dom
    );
    assert!(!page.error_shown(), "error banner shown:\n{}", page.dom);
    let ids: Vec<String> = (0..5).map(|i| c.id(i)).collect();
    let alive: BTreeMap<String, String> = ids
        .iter()
        .map(|id| (id.clone(), "alive".to_string()))
        .collect();
    assert_eq!(page.rows(), alive);
    let ring = page.ring();
    assert_eq!(ring.keys().cloned().collect::<Vec<_>>(), ids);
    for (id, (statuses, drawn)) in &ring {
        assert_eq!(statuses, &BTreeSet::from(["alive".to_string()]), "{id}");
        assert!(arcs_of[id] > 0, "{id} owns no arc");
        assert!(
            *drawn >= arcs_of[id],
            "{id}: {drawn} of {} arcs",
            arcs_of[id]
        );
    }
    assert_eq!(page.summary(), "5 nodes: 5 alive");
    assert_eq!(page.total("keys"), Some((KEYS * N) as f64));
    // The page polled at least twice, and each poll is a request to n1: a live, non-zero rate.
    let rate = page.total("rate").expect("a request rate after two polls");
    assert!(rate > 0.0, "total request rate {rate}");
    screenshot(&browser, &url, "status-page.png").await;

    // Kill n3: the page, polling n1, shows it dead; its arcs stay on the ring.
    let victim = 2;
    let dead = c.id(victim);
    c.kill(victim).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let page = loop {
        let page = render(&browser, &url).await;
        if page.rows().get(&dead).map(String::as_str) == Some("dead") {
            break page;
        }
        assert!(
            Instant::now() < deadline,
            "{dead} never shown dead; rows {:?}",
            page.rows()
        );
    };
    assert!(page.loaded() && !page.error_shown(), "{}", page.dom);
    let mut expected = alive.clone();
    expected.insert(dead.clone(), "dead".to_string());
    assert_eq!(page.rows(), expected);
    assert_eq!(page.summary(), "5 nodes: 4 alive, 1 dead");
    let ring = page.ring();
    assert_eq!(ring.len(), 5, "dead nodes keep their place in the ring");
    assert_eq!(ring[&dead].0, BTreeSet::from(["dead".to_string()]));
    screenshot(&browser, &url, "status-page-dead.png").await;
    println!("status page test took {:?}", started.elapsed());
    c.shutdown().await;
}
