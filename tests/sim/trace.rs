//! The run's trace: every delivered message, folded into one hash.
//!
//! Each read of a TCP stream and each gossip datagram received is hashed with the reading
//! host's name and the simulated time. Two runs of one seed must give the same hash; a
//! simulation runs on one thread, so the hash is a thread-local.

use std::cell::RefCell;

use xxhash_rust::xxh3::Xxh3;

thread_local! {
    static TRACE: RefCell<(Xxh3, u64)> = const { RefCell::new((Xxh3::new(), 0)) };
    static VERBOSE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Starts a new trace on this thread; `verbose` prints every message as it is delivered.
pub fn reset(verbose: bool) {
    TRACE.with(|t| *t.borrow_mut() = (Xxh3::new(), 0));
    VERBOSE.with(|v| v.set(verbose));
}

/// Folds one message delivered to `host` into the trace.
pub fn record(kind: &[u8], host: &str, bytes: &[u8]) {
    if bytes.is_empty() {
        return;
    }
    let at = turmoil::sim_elapsed().unwrap_or_default().as_micros() as u64;
    TRACE.with(|t| {
        let (h, n) = &mut *t.borrow_mut();
        h.update(kind);
        h.update(host.as_bytes());
        h.update(&at.to_le_bytes());
        h.update(bytes);
        *n += 1;
    });
    if VERBOSE.with(|v| v.get()) {
        let shown = String::from_utf8_lossy(&bytes[..bytes.len().min(120)]).replace('\n', "\\n");
        eprintln!(
            "{:>9.3}s {host:>3} {} {:>5} B {shown}",
            at as f64 / 1e6,
            String::from_utf8_lossy(kind),
            bytes.len()
        );
    }
}

/// Logs a line of the workload or the fault schedule into the trace (and the verbose output).
pub fn note(host: &str, line: &str) {
    record(b"note", host, line.as_bytes());
}

/// The trace so far: its hash and how many messages it holds.
pub fn finish() -> (u64, u64) {
    TRACE.with(|t| {
        let (h, n) = &*t.borrow();
        (h.digest(), *n)
    })
}
