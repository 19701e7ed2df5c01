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

    /// Replicas that failed so far.
    pub fn failures(&self) -> usize {
        self.failures
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

/// Counts the acknowledgements of one write, which goes to home replicas and, in place of
/// homes that are down, to fallbacks (sloppy quorum).
///
/// **Homes first.** A fallback's acknowledgement counts toward W only once the homes alone can
/// no longer make W. While they still can, the write waits for them, even if a fallback was
/// faster. Why: a reader asks R live *homes*. If the coordinator counted a fallback while a
/// home it sent the write to was still on its way, and another coordinator already saw the
/// missing home back up, that reader could ask exactly the two homes without the write, and
/// a write acknowledged a moment ago would read as not found (seen in a rolling restart). With
/// homes first, a write acknowledged by W homes meets every read of R homes when R + W > N,
/// whatever each coordinator thinks of the others. Fallbacks still carry a write when too few
/// homes are up: that is what a sloppy quorum is for. The cost is small: fallbacks are only
/// asked while a home is down, and then the write waits for a live home rather than for the
/// fastest replica.
///
/// `pw` (Riak's primary write quorum) counts home acknowledgements only.
#[derive(Debug, Clone)]
pub struct WriteTracker {
    homes: QuorumTracker,
    fallbacks: QuorumTracker,
    w: usize,
    pw: usize,
}

impl WriteTracker {
    /// A write sent to `homes` home replicas and `fallbacks` fallbacks, needing `w`
    /// acknowledgements of which `pw` from homes.
    pub fn new(homes: usize, fallbacks: usize, w: usize, pw: usize) -> WriteTracker {
        WriteTracker {
            homes: QuorumTracker::new(homes, w),
            fallbacks: QuorumTracker::new(fallbacks, w),
            w,
            pw,
        }
    }

    /// Records one replica's answer.
    pub fn reply(&mut self, is_home: bool, ok: bool) -> QuorumStatus {
        let q = if is_home {
            &mut self.homes
        } else {
            &mut self.fallbacks
        };
        if ok {
            q.success();
        } else {
            q.failure();
        }
        self.status()
    }

    /// Home acknowledgements still possible: those received plus those outstanding.
    fn homes_possible(&self) -> usize {
        self.homes.successes() + self.homes.outstanding()
    }

    /// The acknowledgements that count toward W (see the type's docs).
    pub fn acknowledged(&self) -> usize {
        if self.homes_possible() >= self.w {
            self.homes.successes()
        } else {
            self.homes.successes() + self.fallbacks.successes()
        }
    }

    /// The home acknowledgements received.
    pub fn home_acks(&self) -> usize {
        self.homes.successes()
    }

    /// All acknowledgements still possible, fallbacks' included.
    fn possible(&self) -> usize {
        self.homes_possible() + self.fallbacks.successes() + self.fallbacks.outstanding()
    }

    /// Met once W count and `pw` came from homes; failed once either can no longer happen.
    pub fn status(&self) -> QuorumStatus {
        if self.acknowledged() >= self.w && self.homes.successes() >= self.pw {
            QuorumStatus::Met
        } else if self.possible() < self.w || self.homes_possible() < self.pw {
            QuorumStatus::Failed
        } else {
            QuorumStatus::Pending
        }
    }

    /// Whether the write can stop waiting: met, or failed and either a replica failed or none
    /// is left to answer. A write that could never succeed (fewer replicas than W) still
    /// waits for the answers, so that the error says how many acknowledged.
    pub fn is_done(&self) -> bool {
        let outstanding = self.homes.outstanding() + self.fallbacks.outstanding();
        match self.status() {
            QuorumStatus::Met => true,
            QuorumStatus::Failed => {
                self.homes.failures() + self.fallbacks.failures() > 0 || outstanding == 0
            }
            QuorumStatus::Pending => false,
        }
    }

    /// Whether W itself can no longer be met (rather than only `pw`).
    pub fn missed_w(&self) -> bool {
        self.possible() < self.w
    }
}

/// Counts the replies of one read: R of them, and `pr` of those from home replicas (Riak's
/// primary read quorum).
///
/// A read asks live homes first and fallbacks only in place of missing homes; a fallback that
/// holds no hint for the key answers "nothing", and by default that counts toward R (a sloppy
/// read). With `pr`, only home replies count toward it, so a read at `pr = r` after a write
/// acknowledged at `pw = w`, with r + w > N, meets that write on some home.
#[derive(Debug, Clone)]
pub struct ReadTracker {
    all: QuorumTracker,
    homes: QuorumTracker,
}

impl ReadTracker {
    /// A read that may ask `homes` home replicas and `others` fallbacks, needing `r` replies
    /// of which `pr` from homes.
    pub fn new(homes: usize, others: usize, r: usize, pr: usize) -> ReadTracker {
        ReadTracker {
            all: QuorumTracker::new(homes + others, r),
            homes: QuorumTracker::new(homes, pr),
        }
    }

    /// Records one replica's reply (`ok`: it answered with its versions).
    pub fn reply(&mut self, is_home: bool, ok: bool) -> QuorumStatus {
        let trackers = [Some(&mut self.all), is_home.then_some(&mut self.homes)];
        for q in trackers.into_iter().flatten() {
            if ok {
                q.success();
            } else {
                q.failure();
            }
        }
        self.status()
    }

    /// Met once R replies came, `pr` of them from homes; failed once either cannot happen.
    pub fn status(&self) -> QuorumStatus {
        match (self.all.status(), self.homes.status()) {
            (QuorumStatus::Met, QuorumStatus::Met) => QuorumStatus::Met,
            (QuorumStatus::Failed, _) | (_, QuorumStatus::Failed) => QuorumStatus::Failed,
            _ => QuorumStatus::Pending,
        }
    }

    /// Whether the read can stop waiting: met, or failed and either a replica failed or none
    /// is left to answer (so that the error says how many replied).
    pub fn is_done(&self) -> bool {
        match self.status() {
            QuorumStatus::Met => true,
            QuorumStatus::Failed => self.all.failures() > 0 || self.all.outstanding() == 0,
            QuorumStatus::Pending => false,
        }
    }

    /// Replies so far.
    pub fn successes(&self) -> usize {
        self.all.successes()
    }

    /// Replies so far from home replicas.
    pub fn home_replies(&self) -> usize {
        self.homes.successes()
    }

    /// Whether R replies came (whatever `pr` says).
    pub fn met_r(&self) -> bool {
        self.all.status() == QuorumStatus::Met
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

    /// A write's replies, one letter per replica: `H`/`h` a home that acknowledged/failed,
    /// `F`/`f` the same for a fallback.
    fn write(
        homes: usize,
        fallbacks: usize,
        w: usize,
        pw: usize,
        replies: &str,
    ) -> Vec<QuorumStatus> {
        let mut t = WriteTracker::new(homes, fallbacks, w, pw);
        replies
            .chars()
            .map(|c| t.reply(c.eq_ignore_ascii_case(&'h'), c.is_uppercase()))
            .collect()
    }

    #[test]
    fn a_write_waits_for_a_live_home_rather_than_count_a_fallback() {
        // N=3, W=2, one home down: the coordinator's own ack, then the fallback's, then the
        // other home's. Met only with the home.
        assert_eq!(write(2, 1, 2, 0, "HFH"), [Pending, Pending, Met]);
        // The other home fails: now the fallback counts.
        assert_eq!(write(2, 1, 2, 0, "HFh"), [Pending, Pending, Met]);
        assert_eq!(write(2, 1, 2, 0, "HhF"), [Pending, Pending, Met]);
        // Two homes down: fallbacks count from the start.
        assert_eq!(write(1, 2, 2, 0, "HF"), [Pending, Met]);
        // All homes up: as a plain quorum.
        assert_eq!(write(3, 0, 2, 0, "HH"), [Pending, Met]);
        assert_eq!(write(3, 0, 2, 0, "hhH"), [Pending, Failed, Failed]);
        // pw counts homes only.
        assert_eq!(write(1, 2, 2, 2, "HFF"), [Failed, Failed, Failed]);
        assert_eq!(write(2, 1, 1, 2, "FHH"), [Pending, Pending, Met]);
        // W=3 with one home down needs the fallback.
        assert_eq!(write(2, 1, 3, 0, "HHF"), [Pending, Pending, Met]);
    }

    #[test]
    fn a_write_that_cannot_succeed_still_hears_every_replica() {
        let mut t = WriteTracker::new(1, 1, 3, 0);
        assert_eq!(t.status(), Failed);
        assert!(!t.is_done());
        t.reply(true, true);
        assert!(!t.is_done());
        t.reply(false, true);
        assert!(t.is_done());
        assert!(t.missed_w());
        assert_eq!(t.acknowledged(), 2);
        let mut t = WriteTracker::new(1, 1, 1, 2);
        t.reply(true, true);
        t.reply(false, true);
        assert_eq!(t.status(), Failed);
        assert!(!t.missed_w(), "W was met; pw was not");
    }

    /// Every write of up to 6 replicas, every W and pw, every order of replies: the tracker
    /// agrees with a direct count.
    #[test]
    fn write_tracker_agrees_with_a_direct_count_exhaustively() {
        let symbols = ['H', 'h', 'F', 'f'];
        for homes in 0..=3usize {
            for fallbacks in 0..=3usize {
                let n = homes + fallbacks;
                for w in 1..=4usize {
                    for pw in 0..=3usize {
                        for code in 0..symbols.len().pow(n as u32) {
                            let seq: Vec<char> = (0..n)
                                .map(|i| symbols[code / symbols.len().pow(i as u32) % 4])
                                .collect();
                            let h_count =
                                seq.iter().filter(|c| c.eq_ignore_ascii_case(&'h')).count();
                            if h_count != homes {
                                continue;
                            }
                            check_write(homes, fallbacks, w, pw, &seq);
                        }
                    }
                }
            }
        }
    }

    fn check_write(homes: usize, fallbacks: usize, w: usize, pw: usize, seq: &[char]) {
        let mut t = WriteTracker::new(homes, fallbacks, w, pw);
        let (mut hs, mut hf, mut fs, mut ff) = (0, 0, 0, 0);
        let mut settled: Option<QuorumStatus> = None;
        for c in seq {
            match c {
                'H' => hs += 1,
                'h' => hf += 1,
                'F' => fs += 1,
                _ => ff += 1,
            }
            let status = t.reply(c.eq_ignore_ascii_case(&'h'), c.is_uppercase());
            let ctx = format!("homes={homes} fallbacks={fallbacks} w={w} pw={pw} {seq:?}");
            let (h_left, f_left) = (homes - hs - hf, fallbacks - fs - ff);
            match status {
                Met => {
                    assert!(hs >= pw && hs + fs >= w, "{ctx}");
                    // A fallback counted only once the homes could no longer make W.
                    assert!(
                        hs >= w || hs + h_left < w,
                        "{ctx}: met on a fallback too early"
                    );
                }
                Failed => assert!(
                    hs + h_left + fs + f_left < w || hs + h_left < pw,
                    "{ctx}: failed while still possible"
                ),
                Pending => {
                    assert!(h_left + f_left > 0, "{ctx}: pending with nobody left");
                    assert!(
                        !(hs + fs >= w && hs >= pw && (hs >= w || hs + h_left < w)),
                        "{ctx}: pending though met"
                    );
                }
            }
            if let Some(before) = settled {
                assert_eq!(status, before, "{ctx}: changed its mind");
            } else if status != Pending {
                settled = Some(status);
            }
        }
    }

    #[test]
    fn a_read_at_pr_counts_only_home_replies() {
        // Two homes asked (one dead), one fallback: R = 2 is met by the fallback's reply,
        // pr = 2 is not.
        let mut sloppy = ReadTracker::new(2, 1, 2, 0);
        sloppy.reply(true, true);
        sloppy.reply(false, true);
        assert_eq!(sloppy.status(), QuorumStatus::Met);
        let mut strict = ReadTracker::new(2, 1, 2, 2);
        strict.reply(true, true);
        strict.reply(false, true);
        assert_eq!(strict.status(), QuorumStatus::Pending, "R met, pr not yet");
        assert!(strict.met_r() && !strict.is_done());
        strict.reply(true, false);
        assert_eq!(strict.status(), QuorumStatus::Failed);
        assert!(strict.is_done());
        assert_eq!((strict.successes(), strict.home_replies()), (2, 1));
        // The second home answers instead: met.
        let mut strict = ReadTracker::new(2, 1, 2, 2);
        strict.reply(true, true);
        strict.reply(true, true);
        assert_eq!(strict.status(), QuorumStatus::Met);
        // More homes required than can be asked: failed from the start, but it waits for
        // the replies so that the error can count them.
        let mut hopeless = ReadTracker::new(1, 2, 2, 2);
        assert_eq!(hopeless.status(), QuorumStatus::Failed);
        assert!(!hopeless.is_done());
        hopeless.reply(true, true);
        hopeless.reply(false, true);
        hopeless.reply(false, true);
        assert!(hopeless.is_done());
    }
}
