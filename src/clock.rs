//! Time, as a node reads it: the wall clock through a [`Clock`], elapsed time through tokio.
//!
//! ringkv uses two kinds of time, and each has one way in:
//!
//! - **Wall-clock time**, milliseconds since the Unix epoch, is what TTL expiry is judged by
//!   ([`crate::ttl`]): a PUT stores an absolute `expires_at` by the receiving node's clock, and
//!   every read, conditional write and sweep compares it with the clock of the node doing it.
//!   A node reads it only through the [`Clock`] in its [`crate::Config`], so a test can skew
//!   one node's clock against the others, or move every clock past an expiry instead of
//!   sleeping until it.
//! - **Elapsed time** for a rule (tombstone and hint ages, how long a peer has been dead, the
//!   leave and start-up waits, anti-entropy pacing) is `tokio::time::Instant`, so that
//!   `tokio::time::pause()` and `advance()` reach it. Durations measured only for logs and
//!   metrics stay on `std::time::Instant`: no rule depends on them.
//!
//! A clock's offset is 0 outside tests, and every reading asks the OS: a node follows the
//! system clock (and NTP's corrections to it) exactly as it did before the seam. The
//! deterministic simulator (`tests/sim`) replaces the OS with simulated time
//! ([`Clock::from_source`]), so that one seed replays one run.
//!
//! **Stamps that must not be skewed.** A node's gossip generation
//! ([`crate::server::NodeHandle::start`]) and its watch-announcement versions
//! ([`crate::watch::Watchers::starting_now`]) are seeded from [`Clock::base_ms`], the clock
//! without its offset. Each must exceed whatever the node's previous process issued, or peers
//! keep the old process's state: a test that set a node's clock back and restarted it would
//! make the new process look older than the one it replaces.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch by the system clock, unskewed (0 before 1970).
pub fn system_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Where a [`Clock`] reads time before its offset: milliseconds since the Unix epoch.
pub type Source = Arc<dyn Fn() -> u64 + Send + Sync>;

/// A node's wall clock: the system clock (or a simulated one) plus an offset that tests set.
///
/// Clones share the offset, so the copy of a [`crate::Config`] a test keeps moves the clock of
/// the node started from it (and of its restarts). An atomic, not a lock: readers on every
/// request only load it.
#[derive(Clone, Default)]
pub struct Clock {
    offset_ms: Arc<AtomicI64>,
    /// `None` reads the system clock.
    source: Option<Source>,
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Clock")
            .field("offset_ms", &self.offset_ms())
            .field("simulated", &self.source.is_some())
            .finish()
    }
}

impl Clock {
    /// The system clock, unskewed.
    pub fn system() -> Clock {
        Clock::default()
    }

    /// The system clock, `offset_ms` ahead (behind if negative).
    pub fn skewed(offset_ms: i64) -> Clock {
        Clock {
            offset_ms: Arc::new(AtomicI64::new(offset_ms)),
            source: None,
        }
    }

    /// A clock that reads `source` instead of the system clock, with no offset: simulated
    /// time.
    pub fn from_source(source: Source) -> Clock {
        Clock {
            offset_ms: Arc::default(),
            source: Some(source),
        }
    }

    /// Milliseconds since the Unix epoch by this clock (0 if the offset goes before 1970).
    pub fn now_ms(&self) -> u64 {
        self.base_ms().saturating_add_signed(self.offset_ms())
    }

    /// Milliseconds since the Unix epoch by the clock's source, without its offset: the
    /// system clock, or simulated time.
    pub fn base_ms(&self) -> u64 {
        match &self.source {
            Some(source) => source(),
            None => system_ms(),
        }
    }

    /// True if the clock reads simulated time.
    pub fn is_simulated(&self) -> bool {
        self.source.is_some()
    }

    /// How far this clock is ahead of the system clock, in milliseconds.
    pub fn offset_ms(&self) -> i64 {
        self.offset_ms.load(Ordering::Relaxed)
    }

    /// Sets how far this clock is ahead of the system clock.
    pub fn set_offset_ms(&self, offset_ms: i64) {
        self.offset_ms.store(offset_ms, Ordering::Relaxed);
    }

    /// Moves this clock `by` forward, on top of any offset it has.
    pub fn advance(&self, by: Duration) {
        let by = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
        self.offset_ms.fetch_add(by, Ordering::Relaxed);
    }
}

/// `ms` since the Unix epoch in RFC 3339 (`2026-11-21T10:00:00.000Z`).
pub fn rfc3339(ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_millis(t).to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339_is_utc_with_millis() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_763_700_000_123), "2025-11-21T04:40:00.123Z");
    }

    use super::*;

    #[test]
    fn an_unskewed_clock_reads_the_system_clock() {
        let before = system_ms();
        let now = Clock::system().now_ms();
        assert!(before <= now && now <= system_ms());
    }

    #[test]
    fn skew_and_advance_move_one_clock_and_its_clones_only() {
        let clock = Clock::skewed(-5_000);
        let shared = clock.clone();
        let other = Clock::system();
        shared.advance(Duration::from_secs(65));
        assert_eq!(clock.offset_ms(), 60_000);
        let before = system_ms();
        let ahead = clock.now_ms();
        assert!(ahead >= before + 60_000 && ahead <= system_ms() + 60_000);
        assert_eq!(other.offset_ms(), 0);
        clock.set_offset_ms(-1);
        assert_eq!(shared.offset_ms(), -1);
        // A clock set before the epoch reads 0 rather than wrapping.
        assert_eq!(Clock::skewed(i64::MIN).now_ms(), 0);
    }

    #[test]
    fn a_sourced_clock_reads_its_source_plus_its_offset() {
        let clock = Clock::from_source(Arc::new(|| 1_000_000));
        assert!(clock.is_simulated());
        assert_eq!(clock.now_ms(), 1_000_000);
        clock.set_offset_ms(-2_000);
        assert_eq!((clock.now_ms(), clock.base_ms()), (998_000, 1_000_000));
    }
}
