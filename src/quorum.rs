//! Quorum counting, kept apart from the I/O that feeds it.
//!
//! A coordinator sends a request to `total` replicas and needs `required` successes. The
//! tracker says, after each reply, whether the quorum is met, still possible, or can no
//! longer be met, so that the caller answers as early as possible either way (Garage's
//! `rpc_helper` stops as soon as the quorum becomes impossible).

/// Where a quorum call stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuorumStatus {
    /// Not enough replies yet, but the quorum is still reachable.
    Pending,
    /// At least `required` successes.
    Met,
    /// Too many failures: even if every outstanding replica succeeds, the quorum is missed.
    Failed,
}

/// Counts successes and failures of one quorum call.
#[derive(Debug, Clone)]
pub struct QuorumTracker {
    total: usize,
    required: usize,
    successes: usize,
    failures: usize,
}

impl QuorumTracker {
    /// A call to `total` replicas that needs `required` successes.
    pub fn new(total: usize, required: usize) -> QuorumTracker {
        QuorumTracker {
            total,
            required,
            successes: 0,
            failures: 0,
        }
    }

    /// Records one successful reply.
    pub fn success(&mut self) -> QuorumStatus {
        if self.successes + self.failures < self.total {
            self.successes += 1;
        }
        self.status()
    }

    /// Records one failed or timed-out reply.
    pub fn failure(&mut self) -> QuorumStatus {
        if self.successes + self.failures < self.total {
            self.failures += 1;
        }
        self.status()
    }

    /// The current status.
    pub fn status(&self) -> QuorumStatus {
        if self.successes >= self.required {
            QuorumStatus::Met
        } else if self.total - self.failures < self.required {
            QuorumStatus::Failed
        } else {
            QuorumStatus::Pending
        }
    }

    /// True when the caller should stop waiting: the quorum is met, or a failure made it
    /// unreachable, or nobody is left to answer. A call that was hopeless from the start
    /// (fewer replicas asked than required) still waits for every reply, so the error can
    /// say exactly how many replicas answered.
    pub fn is_done(&self) -> bool {
        match self.status() {
            QuorumStatus::Met => true,
            QuorumStatus::Failed => self.failures > 0 || self.outstanding() == 0,
            QuorumStatus::Pending => false,
        }
    }

    /// Successful replies so far.
    pub fn successes(&self) -> usize {
        self.successes
    }

    /// Replies still outstanding.
    pub fn outstanding(&self) -> usize {
        self.total - self.successes - self.failures
    }

    /// Successes required.
    pub fn required(&self) -> usize {
        self.required
    }
}

#[cfg(test)]
mod tests {
    use super::QuorumStatus::*;
    use super::*;

    /// Each row: total, required, the replies in order ('s' success, 'f' failure), and the
    /// status after each reply.
    const TABLE: &[(usize, usize, &str, &[QuorumStatus])] = &[
        (3, 2, "ss", &[Pending, Met]),
        (3, 2, "sfs", &[Pending, Pending, Met]),
        (3, 2, "ff", &[Pending, Failed]),
        (3, 2, "fsf", &[Pending, Pending, Failed]),
        (3, 3, "ssf", &[Pending, Pending, Failed]),
        (3, 3, "sss", &[Pending, Pending, Met]),
        (3, 1, "f", &[Pending]),
        (3, 1, "ffs", &[Pending, Pending, Met]),
        (3, 1, "fff", &[Pending, Pending, Failed]),
        (1, 1, "s", &[Met]),
        (2, 3, "", &[]),
        // Replies past `total` are ignored.
        (2, 2, "ssf", &[Pending, Met, Met]),
    ];

    #[test]
    fn table() {
        for (total, required, replies, expected) in TABLE {
            let mut q = QuorumTracker::new(*total, *required);
            let got: Vec<_> = replies
                .chars()
                .map(|c| if c == 's' { q.success() } else { q.failure() })
                .collect();
            assert_eq!(
                &got, expected,
                "total={total} required={required} {replies}"
            );
        }
    }

    #[test]
    fn impossible_from_the_start() {
        // Fewer live replicas than required: the caller can fail without sending anything.
        assert_eq!(QuorumTracker::new(2, 3).status(), Failed);
        assert_eq!(QuorumTracker::new(0, 1).status(), Failed);
        assert_eq!(QuorumTracker::new(0, 0).status(), Met);
    }

    #[test]
    fn hopeless_calls_still_count_every_reply() {
        let mut q = QuorumTracker::new(2, 3);
        assert_eq!(q.status(), Failed);
        assert!(!q.is_done(), "two replicas can still answer");
        q.success();
        assert!(!q.is_done());
        q.success();
        assert!(q.is_done());
        assert_eq!(q.successes(), 2);
        // A failure ends the wait at once.
        let mut q = QuorumTracker::new(3, 3);
        q.success();
        assert!(!q.is_done());
        q.failure();
        assert!(q.is_done());
        assert!(QuorumTracker::new(0, 1).is_done());
        let mut q = QuorumTracker::new(3, 2);
        q.success();
        q.success();
        assert!(q.is_done());
    }

    #[test]
    fn met_is_stable_and_counts_add_up() {
        for total in 0..6 {
            for required in 1..=total {
                for mask in 0u32..(1 << total) {
                    let mut q = QuorumTracker::new(total, required);
                    let mut met_at = None;
                    for i in 0..total {
                        let st = if mask & (1 << i) != 0 {
                            q.success()
                        } else {
                            q.failure()
                        };
                        if st == Met && met_at.is_none() {
                            met_at = Some(i);
                        }
                        if met_at.is_some() {
                            assert_eq!(st, Met);
                        }
                    }
                    assert_eq!(q.outstanding(), 0);
                    let ok = mask.count_ones() as usize;
                    assert_eq!(q.successes(), ok);
                    assert_eq!(q.status() == Met, ok >= required);
                }
            }
        }
    }
}
