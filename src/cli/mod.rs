//! The client verbs of the `ringkv` binary: `get`, `put`, `del`, `ls`, `watch`, `members`,
//! `replicas`, `leave`, `wait`, and `backup` and `restore` (in `backup`), all built on
//! [`Client`].
//!
//! Output is for people by default and JSON with `--json`. Exit codes are part of the
//! interface, so scripts can branch on them: [`EXIT_OK`], [`EXIT_NOT_FOUND`], [`EXIT_USAGE`]
//! (clap uses 2 for bad arguments too), [`EXIT_UNAVAILABLE`], [`EXIT_CONFLICT`] and
//! [`EXIT_DENIED`].

use std::io::{IsTerminal, Read as _, Write};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use clap::{Args, Subcommand};
use serde_json::json;

use crate::client::{
    Client, Context, DEFAULT_NODE, PutOptions, Read, ReadOptions, WatchEvent, WriteOptions,
};
use crate::config::DEFAULT_LIST_LIMIT;

mod backup;
use crate::error::{Error, Result};

/// The command did what was asked.
pub const EXIT_OK: u8 = 0;
/// `get` found no live value for the key.
pub const EXIT_NOT_FOUND: u8 = 1;
/// Bad arguments, or a request the ring refused as malformed (400, 413).
pub const EXIT_USAGE: u8 = 2;
/// The ring could not serve the request: unreachable, quorum not met, timeout, server error;
/// or a `watch` connection closed.
pub const EXIT_UNAVAILABLE: u8 = 3;
/// The key is not in the state the command needs: the `--if-absent` or `--if-match`
/// condition of a `put` or `del` did not hold (HTTP 412; the key's current context is printed
/// on stderr), or `get --output` found siblings where it needs one value.
pub const EXIT_CONFLICT: u8 = 4;
/// The node refused the request's API token: none or unknown (401), or too small a role
/// (403). See `--token`.
pub const EXIT_DENIED: u8 = 5;

/// Longest value `watch` prints whole; a longer one is shown by its size.
const WATCH_SHOW_BYTES: usize = 200;

/// How often `leave` checks whether the node has handed everything over: a progress line
/// every half second is readable, and costs the node nothing.
const LEAVE_POLL: Duration = Duration::from_millis(500);

/// Which node to talk to.
#[derive(Args, Debug, Clone)]
pub struct Target {
    /// The node's HTTP URL.
    #[arg(long, env = "RINGKV_NODE", default_value = DEFAULT_NODE, value_name = "URL")]
    pub node: String,
    #[command(flatten)]
    pub token: AuthArgs,
}

/// How a command authenticates to a secured ring: its API token, and the CA of `https://`
/// nodes.
#[derive(Args, Debug, Clone, Default)]
pub struct AuthArgs {
    /// API token, for nodes started with --api-tokens.
    #[arg(
        long = "token",
        env = "RINGKV_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub api_token: Option<String>,
    /// CA certificate (PEM) of https:// nodes; a node's self-signed certificate works too.
    #[arg(long, env = "RINGKV_CA_CERT", value_name = "PEM")]
    pub ca_cert: Option<PathBuf>,
}

impl Target {
    pub(crate) fn client(&self) -> Result<Client> {
        // One request per command: fetching the ring first would double it.
        let mut b = Client::builder([&self.node]).routing(false);
        if let Some(t) = &self.token.api_token {
            b = b.token(t);
        }
        if let Some(ca) = &self.token.ca_cert {
            b = b.ca_cert(ca);
        }
        b.build()
    }
}

/// The client verbs.
#[derive(Subcommand, Debug)]
pub enum Verb {
    /// Read a key: prints the value, or every sibling and the context.
    ///
    /// Exit codes: 0 found, 1 not found, 2 bad usage, 3 unavailable, 4 siblings found with
    /// --output (nothing written; `get` without it shows them).
    Get(GetArgs),
    /// Write a key from an argument or a file; prints nothing unless --json.
    ///
    /// Exit codes: 0 written, 2 bad usage, 3 unavailable (the write may still have been
    /// applied), 4 the --if-absent or --if-match condition did not hold: nothing was written,
    /// and the key's current context is printed on stderr.
    Put(PutArgs),
    /// Delete a key (writes a tombstone).
    ///
    /// Exit codes: 0 deleted, 2 bad usage, 3 unavailable, 4 the --if-match condition did not
    /// hold (nothing deleted; the current context is printed on stderr).
    Del(DelArgs),
    /// List the live keys under a prefix, sorted, one per line (every page).
    ///
    /// Keys that are not UTF-8 are shown with U+FFFD for the invalid bytes.
    Ls(LsArgs),
    /// Print every change under a prefix as it happens, one line each, until Ctrl-C.
    ///
    /// Lines read `put KEY = VALUE`, `delete KEY`, `expire KEY`, or `lagged: N changes
    /// missed` when this watcher fell behind. Changes are delivered at most once and only while
    /// connected. Exit codes: 0 on Ctrl-C or when stdout closes, 3 when the connection closes
    /// or breaks (the node went away).
    Watch(WatchArgs),
    /// List the ring's members as the node sees them.
    Members(MembersArgs),
    /// The key's home replicas, in preference order.
    Replicas(ReplicasArgs),
    /// Decommission a node: it hands its data to the new owners, then exits.
    Leave(LeaveArgs),
    /// Copy every live key of a running ring to FILE (`-` for stdout): siblings, causal
    /// contexts, content types and expiry times. Needs the admin role.
    ///
    /// The copy is fuzzy: each key is as it was when its segment was read. Exit codes: 0
    /// written, 2 bad usage, 3 some ring segment had no home replica that answered (the
    /// ranges are named; no file is left), 5 token refused.
    Backup(backup::BackupArgs),
    /// Load a backup FILE into a ring of any shape, merging by causality. Needs the admin
    /// role.
    ///
    /// The whole file is verified first (unless --force). Exit codes: 0 restored (or, with
    /// --dry-run, verified), 2 bad usage or a truncated or damaged file (the byte offset is
    /// printed), 3 the ring could not take a batch, 5 token refused.
    Restore(backup::RestoreArgs),
    /// Wait until nodes are ready to serve (`GET /ready` answers 200 on each).
    ///
    /// Exit codes: 0 ready, 3 not ready within --timeout (the last reason is printed).
    Wait(WaitArgs),
}

#[derive(Args, Debug)]
pub struct GetArgs {
    /// The key.
    pub key: String,
    /// Replies to wait for (1..N); the node's default otherwise.
    #[arg(long)]
    pub r: Option<usize>,
    /// Replies that must come from home replicas (0..r): with --pr equal to r after a write at
    /// --pw equal to w, and r + w > N, the read sees that write.
    #[arg(long)]
    pub pr: Option<usize>,
    /// Print `{"key", "context", "siblings": [base64…], "content_types", "expires_at"}`.
    #[arg(long)]
    pub json: bool,
    /// Write the value to this file, byte for byte, instead of stdout.
    #[arg(long, short, value_name = "PATH", conflicts_with = "json")]
    pub output: Option<PathBuf>,
    #[command(flatten)]
    pub target: Target,
}

#[derive(Args, Debug)]
pub struct PutArgs {
    /// The key.
    pub key: String,
    /// The value, as given (or use --file).
    #[arg(required_unless_present = "file", conflicts_with = "file")]
    pub value: Option<String>,
    /// Read the value from this file, byte for byte (`-` reads stdin).
    #[arg(long, value_name = "PATH")]
    pub file: Option<PathBuf>,
    /// Expire the value after this long: seconds, or a duration such as 90s, 10m, 1h30m
    /// (rounded up to whole seconds).
    #[arg(long, value_name = "S", value_parser = parse_ttl)]
    pub ttl: Option<Duration>,
    /// Store this content type with the value; reads return it. Never guessed from a file:
    /// application/octet-stream unless given.
    #[arg(long, value_name = "TYPE")]
    pub content_type: Option<String>,
    /// Write only if the key has no live value (exit 4 otherwise).
    #[arg(long, conflicts_with = "if_match")]
    pub if_absent: bool,
    #[command(flatten)]
    pub write: WriteArgs,
}

#[derive(Args, Debug)]
pub struct DelArgs {
    /// The key.
    pub key: String,
    #[command(flatten)]
    pub write: WriteArgs,
}

/// Flags shared by `put` and `del`.
#[derive(Args, Debug)]
pub struct WriteArgs {
    /// The context of the versions this write supersedes (from `get`).
    #[arg(long, value_name = "CTX")]
    pub context: Option<String>,
    /// Write only if the key's versions are exactly those this context covers (exit 4
    /// otherwise): a compare-and-swap with the context of a `get`.
    #[arg(long, value_name = "CTX")]
    pub if_match: Option<String>,
    /// Acknowledgements to wait for (1..N); the node's default otherwise.
    #[arg(long)]
    pub w: Option<usize>,
    /// How many acknowledgements must come from home replicas.
    #[arg(long)]
    pub pw: Option<usize>,
    /// Print `{"key", "context"}` with the new version's context.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub target: Target,
}

#[derive(Args, Debug)]
pub struct LsArgs {
    /// Only keys that start with this (every key by default).
    #[arg(long, default_value = "")]
    pub prefix: String,
    /// Print at most this many keys (all by default).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub limit: Option<u64>,
    /// Print `{"keys": [...]}`.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub target: Target,
}

#[derive(Args, Debug)]
pub struct WatchArgs {
    /// Watch the keys that start with this ("" for every key).
    pub prefix: String,
    /// Print each change as the server sends it: one JSON object per line, `{"op": "put" |
    /// "delete" | "expire", "key", "value" (base64, puts only), "context"}` or `{"op":
    /// "lagged", "missed"}`.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub target: Target,
}

#[derive(Args, Debug)]
pub struct MembersArgs {
    /// Print `{"members": [{"id", "status", "http", "rpc", "generation"}]}`.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub target: Target,
}

#[derive(Args, Debug)]
pub struct ReplicasArgs {
    /// The key.
    pub key: String,
    /// Print `{"key", "replicas": [ids]}`.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub target: Target,
}

#[derive(Args, Debug)]
pub struct LeaveArgs {
    /// Give up waiting after this many seconds (the node keeps leaving).
    #[arg(long, default_value_t = 600)]
    pub timeout_secs: u64,
    #[command(flatten)]
    pub target: Target,
}

#[derive(Args, Debug)]
pub struct WaitArgs {
    /// Wait for readiness: the node sees a quorum, has heard a seed and caught up with its
    /// peers (the only condition there is to wait for, for now; the flag keeps scripts
    /// explicit).
    #[arg(long, required = true)]
    pub ready: bool,
    /// Give up after this long: seconds, or a duration such as 500ms, 30s, 2m.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// The nodes to wait for (repeat the flag, or separate URLs with commas).
    #[arg(long, env = "RINGKV_NODE", default_value = DEFAULT_NODE, value_name = "URL", value_delimiter = ',')]
    pub node: Vec<String>,
    /// CA certificate (PEM) of https:// nodes.
    #[arg(long, env = "RINGKV_CA_CERT", value_name = "PEM")]
    pub ca_cert: Option<PathBuf>,
}

/// The exit code for a failed command.
pub fn exit_code(err: &Error) -> u8 {
    match err {
        Error::InvalidInput(_) | Error::ValueTooLarge { .. } | Error::MethodNotAllowed(_) => {
            EXIT_USAGE
        }
        Error::PreconditionFailed { .. } => EXIT_CONFLICT,
        Error::Unauthorized(_) | Error::Forbidden(_) => EXIT_DENIED,
        _ => EXIT_UNAVAILABLE,
    }
}

/// Runs a verb; prints its output, or the error on stderr. Returns the exit code.
pub async fn run(verb: Verb) -> u8 {
    let res = match verb {
        Verb::Get(args) => get(args).await,
        Verb::Put(args) => put(args).await,
        Verb::Del(args) => del(args).await,
        Verb::Ls(args) => ls(args).await,
        Verb::Watch(args) => watch(args).await,
        Verb::Members(args) => members(args).await,
        Verb::Replicas(args) => replicas(args).await,
        Verb::Leave(args) => leave(args).await,
        Verb::Wait(args) => wait(args).await,
        Verb::Backup(args) => backup::backup(args).await,
        Verb::Restore(args) => backup::restore(args).await,
    };
    match res {
        Ok(code) => code,
        Err(err) => {
            eprintln!("ringkv: {err}");
            if let Error::PreconditionFailed { context } = &err {
                eprintln!("current context: {context}");
            }
            exit_code(&err)
        }
    }
}

async fn get(args: GetArgs) -> Result<u8> {
    let client = args.target.client()?;
    let read = client
        .get_with(
            &args.key,
            &ReadOptions {
                r: args.r,
                pr: args.pr,
            },
        )
        .await?;
    if let Some(path) = &args.output {
        return get_to_file(&args.key, &read, path);
    }
    if args.json {
        let siblings: Vec<String> = read.values().iter().map(|v| B64.encode(v)).collect();
        print_json(&json!({
            "key": args.key,
            "context": read.context(),
            "siblings": siblings,
            "content_types": read.content_types(),
            "expires_at": read.expires_at().map(rfc3339),
        }))?;
    } else {
        match &read {
            Read::NotFound { .. } => eprintln!("ringkv: key {:?} not found", args.key),
            Read::Value { value, .. } => {
                let mut out = value.to_vec();
                // A newline for a person at a terminal; a pipe or file gets the exact bytes.
                if std::io::stdout().is_terminal() && !out.ends_with(b"\n") {
                    out.push(b'\n');
                }
                write_stdout(&out)?;
            }
            Read::Siblings {
                values, context, ..
            } => {
                let mut text = format!("{} siblings:\n", values.len());
                for (i, v) in values.iter().enumerate() {
                    text.push_str(&format!("  {}: {}\n", i + 1, show_value(v)));
                }
                text.push_str(&format!("context: {context}\n"));
                write_stdout(text.as_bytes())?;
            }
        }
    }
    Ok(if read.is_found() {
        EXIT_OK
    } else {
        EXIT_NOT_FOUND
    })
}

/// `get --output`: the single value goes to the file; nothing is written otherwise.
fn get_to_file(key: &str, read: &Read, path: &PathBuf) -> Result<u8> {
    match read {
        Read::NotFound { .. } => {
            eprintln!("ringkv: key {key:?} not found");
            Ok(EXIT_NOT_FOUND)
        }
        Read::Value { value, .. } => {
            std::fs::write(path, value)
                .map_err(|e| Error::invalid(format!("cannot write {}: {e}", path.display())))?;
            Ok(EXIT_OK)
        }
        Read::Siblings { values, .. } => {
            eprintln!(
                "ringkv: key {key:?} has {} siblings, nothing written to {}; \
                 `ringkv get {key}` shows them and the context to resolve them with",
                values.len(),
                path.display()
            );
            Ok(EXIT_CONFLICT)
        }
    }
}

/// A time as RFC 3339 UTC with milliseconds, as the server writes it.
fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// `--ttl`: whole seconds, or a humantime duration (`90s`, `1h30m`); positive.
/// A duration flag: whole seconds, or humantime (`500ms`, `30s`, `2m`, `1h30m`).
pub fn parse_duration(s: &str) -> std::result::Result<Duration, String> {
    match s.parse::<u64>() {
        Ok(secs) => Ok(Duration::from_secs(secs)),
        Err(_) => humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e}")),
    }
}

fn parse_ttl(s: &str) -> std::result::Result<Duration, String> {
    let ttl = match s.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => humantime::parse_duration(s)
            .map_err(|e| format!("{e}; give seconds, or a duration such as 90s or 1h30m"))?,
    };
    if ttl.is_zero() {
        return Err("the time to live must be positive".into());
    }
    Ok(ttl)
}

/// One sibling on one line: quoted text with escapes, or base64 for binary.
fn show_value(v: &[u8]) -> String {
    match std::str::from_utf8(v) {
        Ok(s) => format!("{s:?}"),
        Err(_) => format!("({} bytes, base64) {}", v.len(), B64.encode(v)),
    }
}

async fn put(args: PutArgs) -> Result<u8> {
    let value = match (&args.value, &args.file) {
        (Some(v), _) => Bytes::from(v.clone()),
        (None, Some(path)) => read_value_file(path)?,
        // clap requires one of the two.
        (None, None) => return Err(Error::invalid("give a VALUE or --file PATH")),
    };
    let opts = PutOptions {
        write: args.write.options()?,
        ttl: args.ttl,
        content_type: args.content_type.clone(),
        if_absent: args.if_absent,
    };
    let client = args.write.target.client()?;
    let ctx = client.put_opts(&args.key, value, &opts).await?;
    args.write.report(&args.key, &ctx)
}

async fn del(args: DelArgs) -> Result<u8> {
    let client = args.write.target.client()?;
    let ctx = client
        .delete_with(&args.key, &args.write.options()?)
        .await?;
    args.write.report(&args.key, &ctx)
}

impl WriteArgs {
    fn options(&self) -> Result<WriteOptions> {
        let parse = |ctx: &Option<String>| ctx.as_deref().map(str::parse::<Context>).transpose();
        Ok(WriteOptions {
            context: parse(&self.context)?,
            if_match: parse(&self.if_match)?,
            w: self.w,
            pw: self.pw,
            retry: false,
        })
    }

    fn report(&self, key: &str, ctx: &Context) -> Result<u8> {
        if self.json {
            print_json(&json!({ "key": key, "context": ctx }))?;
        }
        Ok(EXIT_OK)
    }
}

fn read_value_file(path: &PathBuf) -> Result<Bytes> {
    let cannot = |e: std::io::Error| Error::invalid(format!("cannot read {}: {e}", path.display()));
    if path.as_os_str() == "-" {
        let mut buf = Vec::new();
        std::io::stdin().read_to_end(&mut buf).map_err(cannot)?;
        return Ok(Bytes::from(buf));
    }
    std::fs::read(path).map(Bytes::from).map_err(cannot)
}

/// Lists every page (or up to `--limit` keys). Plain output is printed page by page, so a
/// long listing starts at once and stops when the reader goes away.
async fn ls(args: LsArgs) -> Result<u8> {
    let client = args.target.client()?;
    let max = args.limit.map_or(usize::MAX, |l| l as usize);
    let mut keys: Vec<String> = Vec::new();
    let mut printed = 0usize;
    let mut after: Option<String> = None;
    while printed < max {
        let want = (max - printed).min(DEFAULT_LIST_LIMIT);
        let page = client.list(&args.prefix, after.as_deref(), want).await?;
        printed += page.keys.len();
        if args.json {
            keys.extend(page.keys);
        } else if !page.keys.is_empty() {
            let mut text = page.keys.join("\n");
            text.push('\n');
            if !write_out(text.as_bytes())? {
                return Ok(EXIT_OK);
            }
        }
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    if args.json {
        print_json(&json!({ "keys": keys }))?;
    }
    Ok(EXIT_OK)
}

/// Prints each change under the prefix until Ctrl-C, the connection closes or stdout does.
async fn watch(args: WatchArgs) -> Result<u8> {
    let client = args.target.client()?;
    let mut ctrl_c = interrupted();
    let mut watch = client.watch(&args.prefix).await?;
    // Printed once the watch is in place: every change from now on is shown.
    eprintln!(
        "ringkv: watching {:?} through {}; Ctrl-C to stop",
        args.prefix,
        watch.node()
    );
    loop {
        let line = tokio::select! {
            _ = &mut ctrl_c => return Ok(EXIT_OK),
            line = next_watch_line(&mut watch, args.json) => line,
        };
        match line {
            None => {
                eprintln!("ringkv: the watch connection to {} closed", watch.node());
                return Ok(EXIT_UNAVAILABLE);
            }
            Some(line) => {
                let mut line = line?;
                line.push('\n');
                if !write_out(line.as_bytes())? {
                    return Ok(EXIT_OK);
                }
            }
        }
    }
}

/// Resolves on Ctrl-C (SIGINT). The handler is in place when this returns, not only once the
/// future is first polled, so an interrupt that comes at once is not lost.
fn interrupted() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut int) = signal(SignalKind::interrupt()) {
            return Box::pin(async move {
                int.recv().await;
            });
        }
    }
    Box::pin(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}

/// The next change as one line: the server's JSON, or [`show_event`].
async fn next_watch_line(watch: &mut crate::client::Watch, json: bool) -> Option<Result<String>> {
    if json {
        watch.recv_raw().await
    } else {
        watch.recv().await.map(|ev| ev.map(|ev| show_event(&ev)))
    }
}

/// A change for people: `put KEY = VALUE`, `delete KEY`, `expire KEY`, or the lag notice.
fn show_event(ev: &WatchEvent) -> String {
    match ev {
        WatchEvent::Put { key, value, .. } if value.len() <= WATCH_SHOW_BYTES => {
            format!("put {key} = {}", show_value(value))
        }
        WatchEvent::Put { key, value, .. } => format!("put {key} = ({} bytes)", value.len()),
        WatchEvent::Delete { key, .. } => format!("delete {key}"),
        WatchEvent::Expire { key, .. } => format!("expire {key}"),
        WatchEvent::Lagged { missed } => format!("lagged: {missed} changes missed"),
    }
}

async fn members(args: MembersArgs) -> Result<u8> {
    let membership = args.target.client()?.membership().await?;
    if args.json {
        print_json(&json!(membership))?;
        return Ok(EXIT_OK);
    }
    let mib = |b: u64| format!("{}", b >> 20);
    let rows: Vec<[String; 9]> = membership
        .members
        .iter()
        .map(|m| {
            [
                m.id.clone(),
                m.zone.clone().unwrap_or_else(|| "-".into()),
                m.status.clone(),
                m.http.clone().unwrap_or_else(|| "-".into()),
                m.rpc.clone().unwrap_or_else(|| "-".into()),
                m.generation.to_string(),
                m.version.clone().unwrap_or_else(|| "<0.2.0".into()),
                m.protocol.clone().unwrap_or_else(|| "5".into()),
                match m.memory {
                    None => "-".into(),
                    Some(u) if u.limit == 0 => format!("{} MiB/none", mib(u.used)),
                    Some(u) => format!(
                        "{}/{} MiB ({}%)",
                        mib(u.used),
                        mib(u.limit),
                        u.used * 100 / u.limit
                    ),
                },
            ]
        })
        .collect();
    let header = [
        "ID",
        "ZONE",
        "STATUS",
        "HTTP",
        "RPC",
        "GENERATION",
        "VERSION",
        "PROTOCOL",
        "MEMORY",
    ]
    .map(String::from);
    let mut widths = [0usize; 9];
    for row in std::iter::once(&header).chain(&rows) {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut text = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        let cells: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        text.push_str(cells.join("  ").trim_end());
        text.push('\n');
    }
    let features = match membership.features.as_slice() {
        [] => "none".to_string(),
        f => f.join(", "),
    };
    text.push_str(&format!("active features: {features}\n"));
    write_stdout(text.as_bytes())?;
    Ok(EXIT_OK)
}

async fn replicas(args: ReplicasArgs) -> Result<u8> {
    let replicas = args.target.client()?.replicas(&args.key).await?;
    if args.json {
        print_json(&json!({ "key": args.key, "replicas": replicas }))?;
    } else {
        // One home per line: its id, then its zone.
        let text: String = replicas
            .iter()
            .map(|r| format!("{} {}\n", r.id, r.zone.as_deref().unwrap_or("-")))
            .collect();
        write_stdout(text.as_bytes())?;
    }
    Ok(EXIT_OK)
}

/// Asks a node to leave, then waits until it has handed its data over and exited.
async fn leave(args: LeaveArgs) -> Result<u8> {
    let client = args.target.client()?;
    let base = client.nodes()[0].to_string();
    client.leave().await?;
    println!("{base} is leaving; waiting for it to hand its data over");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.timeout_secs);
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(LEAVE_POLL).await;
        match client.stats().await {
            Ok(stats) => println!("  {} keys left to hand over", stats["store"]["keys"]),
            // The node exits once everything is handed over: then it stops answering.
            Err(Error::Unreachable(_) | Error::Interrupted(_) | Error::Shutdown) => {
                println!("{base} has left the ring");
                return Ok(EXIT_OK);
            }
            Err(err) => eprintln!("ringkv: {base}: {err}"),
        }
    }
    Err(Error::Timeout)
}

async fn wait(args: WaitArgs) -> Result<u8> {
    // `/ready` is open to all: no token needed.
    let mut b = Client::builder(&args.node);
    if let Some(ca) = &args.ca_cert {
        b = b.ca_cert(ca);
    }
    let client = b.build()?;
    let started = std::time::Instant::now();
    client.wait_ready(args.timeout).await?;
    println!(
        "ready: {} ({:.2} s)",
        args.node.join(", "),
        started.elapsed().as_secs_f64()
    );
    Ok(EXIT_OK)
}

pub(crate) fn print_json(value: &serde_json::Value) -> Result<()> {
    let mut text = value.to_string();
    text.push('\n');
    write_stdout(text.as_bytes())
}

/// Writes to stdout. A closed pipe (`ringkv get k | head -c 10`) is not an error.
fn write_stdout(bytes: &[u8]) -> Result<()> {
    write_out(bytes).map(|_| ())
}

/// Writes to stdout and flushes; false if the reader has gone (a closed pipe), so a command
/// that would print more can stop.
fn write_out(bytes: &[u8]) -> Result<bool> {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|_| out.flush()) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn siblings_show_text_quoted_and_binary_as_base64() {
        assert_eq!(show_value(b"left"), "\"left\"");
        assert_eq!(show_value(b"two\nlines"), "\"two\\nlines\"");
        assert_eq!(show_value(&[0xff, 0]), "(2 bytes, base64) /wA=");
    }

    #[test]
    fn exit_codes_tell_usage_from_unavailable() {
        assert_eq!(exit_code(&Error::invalid("x")), EXIT_USAGE);
        assert_eq!(
            exit_code(&Error::ValueTooLarge { size: 2, limit: 1 }),
            EXIT_USAGE
        );
        assert_eq!(
            exit_code(&Error::Unavailable {
                replied: 1,
                required: 2
            }),
            EXIT_UNAVAILABLE
        );
        assert_eq!(exit_code(&Error::Unreachable("x".into())), EXIT_UNAVAILABLE);
        assert_eq!(exit_code(&Error::Timeout), EXIT_UNAVAILABLE);
        assert_eq!(
            exit_code(&Error::PreconditionFailed {
                context: "c".into()
            }),
            EXIT_CONFLICT
        );
    }

    #[test]
    fn ttls_are_seconds_or_durations() {
        assert_eq!(parse_ttl("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_ttl("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_ttl("1500ms"), Ok(Duration::from_millis(1500)));
        assert!(parse_ttl("0").is_err());
        assert!(parse_ttl("soon").is_err());
        assert!(parse_ttl("-5").is_err());
    }

    #[test]
    fn watch_events_show_on_one_line() {
        let ctx: Context = "c".parse().unwrap();
        let put = |value: &[u8]| WatchEvent::Put {
            key: "a/1".into(),
            value: Bytes::copy_from_slice(value),
            context: ctx.clone(),
        };
        assert_eq!(show_event(&put(b"hi\n")), "put a/1 = \"hi\\n\"");
        assert_eq!(
            show_event(&put(&[0xff])),
            "put a/1 = (1 bytes, base64) /w=="
        );
        assert_eq!(show_event(&put(&[b'x'; 201])), "put a/1 = (201 bytes)");
        let del = WatchEvent::Delete {
            key: "a/1".into(),
            context: ctx.clone(),
        };
        assert_eq!(show_event(&del), "delete a/1");
        let exp = WatchEvent::Expire {
            key: "a/2".into(),
            context: ctx,
        };
        assert_eq!(show_event(&exp), "expire a/2");
        assert_eq!(
            show_event(&WatchEvent::Lagged { missed: 3 }),
            "lagged: 3 changes missed"
        );
    }
}
