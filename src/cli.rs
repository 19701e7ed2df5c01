//! The client verbs of the `ringkv` binary: `get`, `put`, `del`, `members`, `replicas` and
//! `leave`, all built on [`Client`].
//!
//! Output is for people by default and JSON with `--json`. Exit codes are part of the
//! interface, so scripts can branch on them: [`EXIT_OK`], [`EXIT_NOT_FOUND`], [`EXIT_USAGE`]
//! (clap uses 2 for bad arguments too) and [`EXIT_UNAVAILABLE`].

use std::io::{IsTerminal, Read as _, Write};
use std::path::PathBuf;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use clap::{Args, Subcommand};
use serde_json::json;

use crate::client::{Client, Context, DEFAULT_NODE, Read, ReadOptions, WriteOptions};
use crate::error::{Error, Result};

/// The command did what was asked.
pub const EXIT_OK: u8 = 0;
/// `get` found no live value for the key.
pub const EXIT_NOT_FOUND: u8 = 1;
/// Bad arguments, or a request the ring refused as malformed (400, 413).
pub const EXIT_USAGE: u8 = 2;
/// The ring could not serve the request: unreachable, quorum not met, timeout, server error.
pub const EXIT_UNAVAILABLE: u8 = 3;

/// How often `leave` checks whether the node has handed everything over: a progress line
/// every half second is readable, and costs the node nothing.
const LEAVE_POLL: Duration = Duration::from_millis(500);

/// Which node to talk to.
#[derive(Args, Debug, Clone)]
pub struct Target {
    /// The node's HTTP URL.
    #[arg(long, env = "RINGKV_NODE", default_value = DEFAULT_NODE, value_name = "URL")]
    pub node: String,
}

impl Target {
    fn client(&self) -> Result<Client> {
        Client::new([&self.node])
    }
}

/// The client verbs.
#[derive(Subcommand, Debug)]
pub enum Verb {
    /// Read a key: prints the value, or every sibling and the context.
    Get(GetArgs),
    /// Write a key from an argument or a file; prints nothing unless --json.
    Put(PutArgs),
    /// Delete a key (writes a tombstone).
    Del(DelArgs),
    /// List the ring's members as the node sees them.
    Members(MembersArgs),
    /// The key's home replicas, in preference order.
    Replicas(ReplicasArgs),
    /// Decommission a node: it hands its data to the new owners, then exits.
    Leave(LeaveArgs),
}

#[derive(Args, Debug)]
pub struct GetArgs {
    /// The key.
    pub key: String,
    /// Replies to wait for (1..N); the node's default otherwise.
    #[arg(long)]
    pub r: Option<usize>,
    /// Print `{"key", "context", "siblings": [base64…]}`.
    #[arg(long)]
    pub json: bool,
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

/// The exit code for a failed command.
pub fn exit_code(err: &Error) -> u8 {
    match err {
        Error::InvalidInput(_) | Error::ValueTooLarge { .. } | Error::MethodNotAllowed(_) => {
            EXIT_USAGE
        }
        _ => EXIT_UNAVAILABLE,
    }
}

/// Runs a verb; prints its output, or the error on stderr. Returns the exit code.
pub async fn run(verb: Verb) -> u8 {
    let res = match verb {
        Verb::Get(args) => get(args).await,
        Verb::Put(args) => put(args).await,
        Verb::Del(args) => del(args).await,
        Verb::Members(args) => members(args).await,
        Verb::Replicas(args) => replicas(args).await,
        Verb::Leave(args) => leave(args).await,
    };
    match res {
        Ok(code) => code,
        Err(err) => {
            eprintln!("ringkv: {err}");
            exit_code(&err)
        }
    }
}

async fn get(args: GetArgs) -> Result<u8> {
    let client = args.target.client()?;
    let read = client
        .get_with(&args.key, &ReadOptions { r: args.r })
        .await?;
    if args.json {
        let siblings: Vec<String> = read.values().iter().map(|v| B64.encode(v)).collect();
        print_json(&json!({
            "key": args.key,
            "context": read.context(),
            "siblings": siblings,
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
            Read::Siblings { values, context } => {
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
    let client = args.write.target.client()?;
    let ctx = client
        .put_with(&args.key, value, &args.write.options()?)
        .await?;
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
        Ok(WriteOptions {
            context: self
                .context
                .as_deref()
                .map(str::parse::<Context>)
                .transpose()?,
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

async fn members(args: MembersArgs) -> Result<u8> {
    let members = args.target.client()?.members().await?;
    if args.json {
        print_json(&json!({ "members": members }))?;
        return Ok(EXIT_OK);
    }
    let rows: Vec<[String; 5]> = members
        .iter()
        .map(|m| {
            [
                m.id.clone(),
                m.status.clone(),
                m.http.clone().unwrap_or_else(|| "-".into()),
                m.rpc.clone().unwrap_or_else(|| "-".into()),
                m.generation.to_string(),
            ]
        })
        .collect();
    let header = ["ID", "STATUS", "HTTP", "RPC", "GENERATION"].map(String::from);
    let mut widths = [0usize; 5];
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
    write_stdout(text.as_bytes())?;
    Ok(EXIT_OK)
}

async fn replicas(args: ReplicasArgs) -> Result<u8> {
    let replicas = args.target.client()?.replicas(&args.key).await?;
    if args.json {
        print_json(&json!({ "key": args.key, "replicas": replicas }))?;
    } else {
        let mut text = replicas.join("\n");
        text.push('\n');
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

fn print_json(value: &serde_json::Value) -> Result<()> {
    let mut text = value.to_string();
    text.push('\n');
    write_stdout(text.as_bytes())
}

/// Writes to stdout. A closed pipe (`ringkv get k | head -c 10`) is not an error.
fn write_stdout(bytes: &[u8]) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|_| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
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
    }
}
