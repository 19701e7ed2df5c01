//! The progress line `backup` and `restore` print on stderr: keys, bytes, keys/s and, when
//! the total is known, an ETA.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// How often the line is printed: once a second reads well, redrawn in place on a terminal
/// and as a new line in a log.
const EVERY: Duration = Duration::from_secs(1);

pub(super) struct Progress {
    verb: &'static str,
    on: bool,
    tty: bool,
    started: Instant,
    last: Instant,
    /// The keys expected in all, for the ETA.
    expected: Option<u64>,
}

impl Progress {
    pub(super) fn new(verb: &'static str, on: bool, expected: Option<u64>) -> Progress {
        let now = Instant::now();
        Progress {
            verb,
            on,
            tty: std::io::stderr().is_terminal(),
            started: now,
            last: now,
            expected,
        }
    }

    /// Prints the line if a second passed since the last one.
    pub(super) fn update(&mut self, keys: u64, bytes: u64) {
        if self.on && self.last.elapsed() >= EVERY {
            self.last = Instant::now();
            self.print(keys, bytes, false);
        }
    }

    /// Prints the final line.
    pub(super) fn done(&mut self, keys: u64, bytes: u64) {
        if self.on {
            self.print(keys, bytes, true);
        }
    }

    fn print(&self, keys: u64, bytes: u64, last: bool) {
        let line = line(
            self.verb,
            keys,
            bytes,
            self.started.elapsed(),
            if last { None } else { self.expected },
        );
        let mut err = std::io::stderr().lock();
        let _ = if self.tty {
            write!(err, "\r\x1b[K{line}{}", if last { "\n" } else { "" })
        } else {
            writeln!(err, "{line}")
        };
    }
}

/// `backup: 120000 keys, 14.2 MiB, 98000 keys/s, ETA 9s`.
fn line(verb: &str, keys: u64, bytes: u64, elapsed: Duration, expected: Option<u64>) -> String {
    let secs = elapsed.as_secs_f64().max(1e-3);
    let rate = keys as f64 / secs;
    let mut s = format!(
        "{verb}: {keys} keys, {:.1} MiB, {:.0} keys/s",
        bytes as f64 / (1024.0 * 1024.0),
        rate
    );
    match expected {
        Some(total) if rate > 0.0 && total > keys => {
            s.push_str(&format!(", ETA {:.0}s", (total - keys) as f64 / rate));
        }
        Some(_) if rate > 0.0 => s.push_str(", ETA 0s"),
        _ => s.push_str(&format!(" in {secs:.1}s")),
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_shows_rate_and_eta() {
        let l = line(
            "backup",
            1000,
            2 * 1024 * 1024,
            Duration::from_secs(2),
            Some(3000),
        );
        assert_eq!(l, "backup: 1000 keys, 2.0 MiB, 500 keys/s, ETA 4s");
        let done = line("restore", 10, 0, Duration::from_secs(1), None);
        assert_eq!(done, "restore: 10 keys, 0.0 MiB, 10 keys/s in 1.0s");
    }
}
