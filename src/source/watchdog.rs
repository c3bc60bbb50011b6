//! The progress watchdog: every partition holding undecided input must move.
//!
//! A partition with pinned input (spans read and not yet decided and acknowledged)
//! makes progress when its stream time moves (traces become due) or its lowest
//! pinned offset moves (traces were decided, so the committed offset can follow).
//! When neither has moved for `stall_after` (several decision waits, plus the wait
//! after an outage) and tailsift is not holding the partition on purpose (reading
//! its decisions back), the partition is stalled: its undecided traces would wait
//! forever, and nothing else would say so. The source then turns `/readyz` to 503
//! naming the partition and why, counts the episode, and logs it once.

use std::collections::HashMap;
use std::time::Duration;

/// What the watchdog remembers of one partition slot.
#[derive(Debug, Clone, Copy)]
struct Progress {
    epoch: u32,
    stream_ms: u64,
    lowest_pending: Option<i64>,
    /// Wall time of the last move (or of the start of the current check).
    since_ms: u64,
    stalled: bool,
}

/// How a partition's state changed at a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// It has not moved for `stall_after` (ms it has been still).
    Stalled(u64),
    /// It moved again, or holds nothing undecided any more.
    Recovered,
}

/// Per-partition progress, checked by the source at every idle-probe tick.
#[derive(Debug)]
pub struct Watchdog {
    stall_after: Duration,
    slots: HashMap<u32, Progress>,
}

impl Watchdog {
    /// A watchdog that calls a partition stalled after `stall_after` without a move.
    pub fn new(stall_after: Duration) -> Self {
        Watchdog {
            stall_after,
            slots: HashMap::new(),
        }
    }

    /// Checks one partition at wall time `now_ms`: its assignment `epoch`, stream
    /// time, lowest pinned offset (`None`: nothing undecided) and whether tailsift
    /// holds it on purpose. Returns a change of its stalled state.
    pub fn check(
        &mut self,
        slot: u32,
        epoch: u32,
        stream_ms: u64,
        lowest_pending: Option<i64>,
        held: bool,
        now_ms: u64,
    ) -> Option<Change> {
        let fresh = Progress {
            epoch,
            stream_ms,
            lowest_pending,
            since_ms: now_ms,
            stalled: false,
        };
        let p = self.slots.entry(slot).or_insert(fresh);
        let moved =
            p.epoch != epoch || p.stream_ms != stream_ms || p.lowest_pending != lowest_pending;
        if moved || held || lowest_pending.is_none() {
            let was = p.stalled;
            *p = fresh;
            return was.then_some(Change::Recovered);
        }
        let still = now_ms.saturating_sub(p.since_ms);
        if !p.stalled && still >= self.stall_after.as_millis() as u64 {
            p.stalled = true;
            return Some(Change::Stalled(still));
        }
        None
    }

    /// Forgets a slot no longer assigned; `true` if it was stalled.
    pub fn forget(&mut self, slot: u32) -> bool {
        self.slots.remove(&slot).is_some_and(|p| p.stalled)
    }

    /// Slots checked so far.
    pub fn slots(&self) -> impl Iterator<Item = u32> + '_ {
        self.slots.keys().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_that_holds_input_and_does_not_move_stalls_once() {
        let mut w = Watchdog::new(Duration::from_secs(10));
        assert_eq!(w.check(1, 1, 100, Some(5), false, 0), None);
        assert_eq!(w.check(1, 1, 100, Some(5), false, 9_999), None);
        assert_eq!(
            w.check(1, 1, 100, Some(5), false, 10_000),
            Some(Change::Stalled(10_000))
        );
        assert_eq!(
            w.check(1, 1, 100, Some(5), false, 20_000),
            None,
            "one episode, reported once"
        );
        assert_eq!(
            w.check(1, 1, 101, Some(5), false, 20_100),
            Some(Change::Recovered),
            "stream time moved"
        );
        assert_eq!(w.check(1, 1, 101, Some(5), false, 30_099), None);
        assert_eq!(
            w.check(1, 1, 101, Some(5), false, 30_100),
            Some(Change::Stalled(10_000))
        );
        assert_eq!(
            w.check(1, 1, 101, Some(6), false, 30_200),
            Some(Change::Recovered),
            "the lowest pinned offset moved"
        );
    }

    #[test]
    fn nothing_undecided_or_held_on_purpose_is_never_stalled() {
        let mut w = Watchdog::new(Duration::from_secs(10));
        for now in (0..60_000).step_by(1_000) {
            assert_eq!(w.check(1, 1, 100, None, false, now), None);
            assert_eq!(w.check(2, 1, 100, Some(3), true, now), None);
        }
        assert_eq!(w.check(2, 1, 100, Some(3), false, 68_999), None);
        assert_eq!(
            w.check(2, 1, 100, Some(3), false, 69_000),
            Some(Change::Stalled(10_000)),
            "counted from when it stopped being held"
        );
        assert!(w.forget(2));
        assert!(!w.forget(1));
    }
}
