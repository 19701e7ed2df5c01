//! `ringkv backup` and `ringkv restore` ([`crate::backup`]).

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use clap::Args;
use serde_json::json;

use super::{EXIT_OK, EXIT_USAGE, Target, print_json};
use crate::backup::{self, BackupOptions, Damage, RestoreOptions, RestoreSummary};
use crate::clock::rfc3339;
use crate::error::{Error, Result};

#[derive(Args, Debug)]
pub struct BackupArgs {
    /// Where to write the backup; `-` for stdout. A file is written under FILE.partial and
    /// renamed once complete, so FILE is always a whole backup.
    pub file: String,
    /// Only keys starting with this prefix.
    #[arg(long)]
    pub prefix: Option<String>,
    /// No progress line on stderr.
    #[arg(long, short)]
    pub quiet: bool,
    #[command(flatten)]
    pub target: Target,
}

#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// The backup file; `-` for stdin (with --force or --dry-run: stdin cannot be read twice).
    pub file: String,
    /// Verify the file and print its summary; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Write records as they are read, without verifying the whole file first: a damaged
    /// file is then written up to the damage (and still exits 2).
    #[arg(long)]
    pub force: bool,
    /// No progress line on stderr.
    #[arg(long, short)]
    pub quiet: bool,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub target: Target,
}

pub(super) async fn backup(args: BackupArgs) -> Result<u8> {
    let client = args.target.client()?;
    let opts = BackupOptions {
        prefix: args.prefix.map(Bytes::from),
        progress: !args.quiet,
    };
    if args.file == "-" {
        let out = BufWriter::new(std::io::stdout().lock());
        let (_, summary) = backup::backup(&client, out, &opts).await?;
        eprintln!(
            "backed up {} keys ({} bytes) to stdout",
            summary.keys, summary.bytes
        );
        return Ok(EXIT_OK);
    }
    let path = PathBuf::from(&args.file);
    let partial = partial_path(&path);
    let file = File::create(&partial)
        .map_err(|e| Error::invalid(format!("cannot create {}: {e}", partial.display())))?;
    let done = backup::backup(&client, BufWriter::new(file), &opts).await;
    let finish = |out: BufWriter<File>| -> Result<()> {
        let file = out.into_inner().map_err(|e| Error::from(e.into_error()))?;
        file.sync_all()?;
        std::fs::rename(&partial, &path)?;
        Ok(())
    };
    match done.and_then(|(out, summary)| finish(out).map(|()| summary)) {
        Ok(summary) => {
            eprintln!(
                "backed up {} keys ({:.1} MiB, {} ring segments) in {:.1}s to {}",
                summary.keys,
                summary.bytes as f64 / (1024.0 * 1024.0),
                summary.segments,
                summary.elapsed.as_secs_f64(),
                path.display()
            );
            Ok(EXIT_OK)
        }
        Err(err) => {
            let _ = std::fs::remove_file(&partial);
            Err(err)
        }
    }
}

fn partial_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".partial");
    PathBuf::from(name)
}

pub(super) async fn restore(args: RestoreArgs) -> Result<u8> {
    let stdin = args.file == "-";
    if stdin && !args.force && !args.dry_run {
        return Err(Error::invalid(
            "restore from stdin needs --force (or --dry-run): stdin cannot be read once to \
             verify it and again to write it",
        ));
    }
    let open = || -> Result<Box<dyn std::io::Read>> {
        if stdin {
            return Ok(Box::new(BufReader::new(std::io::stdin().lock())));
        }
        let file = File::open(&args.file)
            .map_err(|e| Error::invalid(format!("cannot open {}: {e}", args.file)))?;
        Ok(Box::new(BufReader::with_capacity(1 << 20, file)))
    };
    let mut expected = None;
    if !args.force || args.dry_run {
        let verified = match backup::verify(open()?) {
            Ok(v) => v,
            Err(damage) => return Ok(damaged(&args.file, &damage, None)),
        };
        if args.dry_run {
            show(&verified, args.json, true)?;
            return Ok(EXIT_OK);
        }
        expected = Some(verified.records);
    }
    let client = args.target.client()?;
    let opts = RestoreOptions {
        progress: !args.quiet,
        expected,
    };
    // A damaged header is an error before anything is written (exit 2, as usage).
    let summary = backup::restore(&client, open()?, &opts).await?;
    if let Some(damage) = &summary.damage {
        return Ok(damaged(&args.file, damage, Some(&summary)));
    }
    show(&summary, args.json, false)?;
    Ok(EXIT_OK)
}

/// Reports a damaged file: exit code 2.
fn damaged(file: &str, damage: &Damage, written: Option<&RestoreSummary>) -> u8 {
    eprintln!("ringkv: {file}: bad backup file {damage}");
    if let Some(s) = written {
        eprintln!(
            "ringkv: --force: {} keys before the damage were restored",
            s.written
        );
    }
    EXIT_USAGE
}

fn show(s: &RestoreSummary, as_json: bool, dry_run: bool) -> Result<()> {
    let h = &s.header;
    if as_json {
        return print_json(&json!({
            "dry_run": dry_run,
            "cluster_id": h.cluster_id,
            "replicas": h.replicas,
            "created_ms": h.created_ms,
            "ringkv": h.ringkv,
            "nodes": h.nodes,
            "keys": s.records,
            "restored": s.written,
            "expired": s.expired,
            "bytes": s.bytes,
            "seconds": s.elapsed.as_secs_f64(),
        }));
    }
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "backup of cluster {:?} (N = {}, {} nodes), taken {} by ringkv {}",
        h.cluster_id,
        h.replicas,
        h.nodes.len(),
        rfc3339(h.created_ms),
        h.ringkv
    )?;
    if dry_run {
        writeln!(
            out,
            "{} keys, {} bytes, verified; {} expired by now (a restore skips them)",
            s.records, s.bytes, s.expired
        )?;
    } else {
        writeln!(
            out,
            "restored {} keys in {:.1}s; skipped {} expired",
            s.written,
            s.elapsed.as_secs_f64(),
            s.expired
        )?;
    }
    Ok(())
}
