//! Stream time: how far each input partition has been read, on the records' own clock.
//!
//! A trace is due `decision_wait` after its first span *in stream time*, not on the
//! wall clock. A partition's stream time is the newest record timestamp read from it
//! so far (CreateTime or LogAppendTime, whichever the topic keeps), as in Kafka
//! Streams, but never past the wall clock (a producer whose clock runs ahead must
//! not make other traces due early). It stands still while nothing can be read: the broker is down, the
//! consumer is paused, rebalancing, frozen (SIGSTOP, a VM pause) or behind, so no
//! trace is decided before the rest of its spans could have been read. Only a
//! partition confirmed caught up and idle follows the wall clock (see
//! [`IdleTracker`]), so the last traces of a quiet partition are still decided on time.
//!
//! The source computes each partition's stream time as it reads ([`PartitionTime`]);
//! the scanner that delivers the partition's spans publishes it to [`StreamClocks`]
//! *after* handing them to the shards, and a shard worker reads the clocks before it
//! drains its channel, so every span a published value covers has reached the shard
//! when the shard acts on it. The source is the only writer of a partition's value
//! (through that partition's one scanner); shard workers only read.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Slots per lazily allocated segment of the clock table.
const SEGMENT: usize = 1024;
/// Segments: at most `SEGMENT * SEGMENTS` partitions over a process's life.
const SEGMENTS: usize = 64;

/// Now on the wall clock, in milliseconds since the epoch.
pub fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Bits of a clock cell holding the stream time in ms (enough until the year 2527).
const MS_BITS: u32 = 44;
const MS_MASK: u64 = (1 << MS_BITS) - 1;
/// Bits holding the assignment epoch the time belongs to (compared modulo 2^20).
const EPOCH_MASK: u32 = (1 << (64 - MS_BITS)) - 1;
/// Half the epoch space: a later epoch is less than this far ahead.
const EPOCH_HALF: u32 = 1 << (63 - MS_BITS);

/// Per-partition stream time, indexed by the offset tracker's partition slot, shared
/// by the source (writer) and the shard workers (readers). Lock-free: one atomic per
/// partition, allocated in segments on first use.
///
/// Each value carries the assignment epoch it was read in. A slot is reused when its
/// partition comes back: the scanner [`enter`](StreamClocks::enter)s the new epoch
/// (stream time unknown) before any of its spans reach a shard, and a shard that
/// took a clock reading before that ignores the reading for spans of a later epoch
/// (see [`ClockReading`]). Otherwise the stream time of the old assignment, which can
/// be ahead of the offset the new one re-reads from, would make a re-read trace due
/// at its first message, before the rest of its spans were read.
#[derive(Debug)]
pub struct StreamClocks {
    segments: [OnceLock<Box<[AtomicU64]>>; SEGMENTS],
}

/// One slot's clock as a shard read it: the assignment epoch (modulo 2^20) and the
/// stream time in ms (`None`: unknown in that epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockReading {
    epoch: u32,
    /// Stream time in ms since the epoch, `None` before the first record.
    pub ms: Option<u64>,
}

impl ClockReading {
    /// Whether spans pinned in assignment `epoch` are covered by this reading.
    pub fn covers_epoch(&self, epoch: u32) -> bool {
        self.epoch == epoch & EPOCH_MASK
    }
}

impl Default for StreamClocks {
    fn default() -> Self {
        StreamClocks::new()
    }
}

impl StreamClocks {
    /// An empty table: every partition's stream time unknown.
    pub fn new() -> Self {
        StreamClocks {
            segments: std::array::from_fn(|_| OnceLock::new()),
        }
    }

    /// Sets `slot`'s stream time (ms since the epoch) in assignment `epoch`. Values of
    /// one assignment only grow; a value of an assignment older than the slot's
    /// current one is ignored.
    pub fn publish(&self, slot: u32, epoch: u32, ms: u64) {
        if let Some(cell) = self.cell(slot, true) {
            let current = unpack(cell.load(Ordering::Acquire));
            if !newer(current.epoch, epoch & EPOCH_MASK) {
                cell.store(pack(epoch, ms), Ordering::Release);
            }
        }
    }

    /// Starts assignment `epoch` of `slot` with its stream time unknown, unless the
    /// slot is in it already. Call before any span of the assignment reaches a shard.
    pub fn enter(&self, slot: u32, epoch: u32) {
        if let Some(cell) = self.cell(slot, true) {
            let current = unpack(cell.load(Ordering::Acquire));
            if current.epoch != epoch & EPOCH_MASK && !newer(current.epoch, epoch & EPOCH_MASK) {
                cell.store(pack(epoch, 0), Ordering::Release);
            }
        }
    }

    /// `slot`'s stream time, `None` before its first record. Slots past the table's
    /// end (more than 65,536 partitions in one process's life) follow the wall clock.
    pub fn get(&self, slot: u32) -> Option<u64> {
        self.read(slot).ms
    }

    /// `slot`'s stream time with the epoch it belongs to.
    pub fn read(&self, slot: u32) -> ClockReading {
        if slot as usize >= SEGMENT * SEGMENTS {
            return ClockReading {
                epoch: 0,
                ms: Some(wall_ms()),
            };
        }
        self.cell(slot, false)
            .map_or(ClockReading { epoch: 0, ms: None }, |c| {
                unpack(c.load(Ordering::Acquire))
            })
    }

    fn cell(&self, slot: u32, create: bool) -> Option<&AtomicU64> {
        let (seg, at) = (slot as usize / SEGMENT, slot as usize % SEGMENT);
        let segment = self.segments.get(seg)?;
        let cells = if create {
            segment.get_or_init(|| (0..SEGMENT).map(|_| AtomicU64::new(0)).collect())
        } else {
            segment.get()?
        };
        cells.get(at)
    }
}

fn pack(epoch: u32, ms: u64) -> u64 {
    (u64::from(epoch & EPOCH_MASK) << MS_BITS) | (ms & MS_MASK)
}

fn unpack(v: u64) -> ClockReading {
    let ms = v & MS_MASK;
    ClockReading {
        epoch: (v >> MS_BITS) as u32 & EPOCH_MASK,
        ms: (ms != 0).then_some(ms),
    }
}

/// Whether epoch `a` is later than `b`, both modulo 2^20 (serial-number order).
fn newer(a: u32, b: u32) -> bool {
    let d = a.wrapping_sub(b) & EPOCH_MASK;
    d != 0 && d < EPOCH_HALF
}

/// What the source knows of one partition's stream time within one assignment.
#[derive(Debug, Clone, Default)]
pub struct PartitionTime {
    /// The assignment epoch this belongs to; a new one starts over.
    pub epoch: u32,
    /// Stream time, ms since the epoch (0: nothing read yet).
    pub stream_ms: u64,
    /// Records read in this assignment: an idle probe that started before the last
    /// one proves nothing.
    pub seq: u64,
    /// Wall time of the first probe of the current idle streak.
    idle_since: Option<u64>,
    /// A probe failed (broker unreachable) since stream time last followed the wall
    /// clock: the next streak must last [`IdleTracker::after_outage`].
    outage: bool,
}

impl PartitionTime {
    /// A partition's stream time at the start of assignment `epoch`: unknown.
    /// `after_outage`: the assignment starts as if a probe had just failed, so its
    /// first idle streak lasts [`IdleTracker::after_outage`] (a pipeline started again
    /// after it stopped itself, typically in a broker outage, whose producers may
    /// still hold records stamped before the restart).
    pub fn new(epoch: u32, after_outage: bool) -> Self {
        PartitionTime {
            epoch,
            outage: after_outage,
            ..PartitionTime::default()
        }
    }

    /// Takes a record's timestamp into account (`None`: the record has none, and its
    /// arrival on the wall clock stands in). Stream time never passes the wall clock:
    /// a timestamp ahead of it moves stream time only up to now, so one producer
    /// whose clock runs ahead cannot make other traces due early (their waits are
    /// counted on `min(stream time, wall clock)`). A timestamp more than `max_skew`
    /// ahead does not move it at all.
    pub fn record(&mut self, timestamp_ms: Option<i64>, max_skew: Duration) -> Stamp {
        let wall = wall_ms();
        self.seq += 1;
        self.idle_since = None;
        let ts = match timestamp_ms {
            Some(t) if t > 0 => t as u64,
            _ => wall,
        };
        let ahead = ts.saturating_sub(wall);
        if ahead > max_skew.as_millis() as u64 {
            return Stamp::Ignored { ahead_ms: ahead };
        }
        self.stream_ms = self.stream_ms.max(ts.min(wall));
        if ahead > AHEAD_TOLERANCE_MS {
            Stamp::Ahead { ahead_ms: ahead }
        } else {
            Stamp::InTime
        }
    }
}

/// How far ahead of the wall clock a record may be stamped before it counts as a
/// future timestamp: hosts whose clocks are synchronised differ by less.
pub const AHEAD_TOLERANCE_MS: u64 = 1_000;

/// How a record's timestamp moved its partition's stream time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stamp {
    /// At or behind the wall clock (within [`AHEAD_TOLERANCE_MS`]): taken as it is.
    InTime,
    /// Ahead of the wall clock, within `max_timestamp_skew`: stream time moved only up
    /// to the wall clock.
    Ahead {
        /// How far ahead, in ms.
        ahead_ms: u64,
    },
    /// Further ahead than `max_timestamp_skew`: stream time did not move.
    Ignored {
        /// How far ahead, in ms.
        ahead_ms: u64,
    },
}

impl Stamp {
    /// How far ahead of the wall clock the record was stamped, if it counts as ahead.
    pub fn ahead_ms(self) -> Option<u64> {
        match self {
            Stamp::InTime => None,
            Stamp::Ahead { ahead_ms } | Stamp::Ignored { ahead_ms } => Some(ahead_ms),
        }
    }
}

/// Decides when an idle partition's stream time may follow the wall clock.
///
/// The source probes partitions with no recent record: it notes the wall time `W`,
/// then asks the broker for the partition's end offset (the last stable offset under
/// `read_committed`). If everything up to it has been read, nothing stamped before
/// `W` is missing. Only a streak of such probes, with no record and no failed probe
/// in between, lasting `delay`, lets stream time move, to `W - delay`: a producer that
/// was cut off by the same outage gets `delay` to deliver what it held. A failed probe
/// (broker unreachable), a probe that finds unread records, or a new record ends the
/// streak; a probe answered after the process was frozen still carries the `W` from
/// before the freeze, so a freeze never advances stream time past what was read.
///
/// After a failed probe the next streak must last `after_outage` instead: producers
/// cut off by the same outage reconnect with a backoff of their own (librdkafka's
/// `reconnect.backoff.max.ms` is 10 s) and deliver, with the timestamps they were
/// stamped with during the outage, only then; a streak of `delay` begun as soon as
/// tailsift was back would decide their traces without those records.
#[derive(Debug, Clone, Copy)]
pub struct IdleTracker {
    /// How long a partition must have been confirmed caught up before its stream time
    /// follows the wall clock, and how far behind it then stays.
    pub delay: Duration,
    /// How long the streak must last after a failed probe (at least `delay`).
    pub after_outage: Duration,
}

impl IdleTracker {
    /// Applies a probe that started at wall time `probe_ms`, saw `seq_at_probe` records
    /// read by then, and found the partition caught up (`Some(true)`), behind
    /// (`Some(false)`) or could not reach the broker (`None`). Returns the partition's
    /// new stream time when it moved.
    pub fn apply(
        &self,
        t: &mut PartitionTime,
        seq_at_probe: u64,
        probe_ms: u64,
        caught_up: Option<bool>,
    ) -> Option<u64> {
        if caught_up.is_none() {
            t.idle_since = None;
            t.outage = true;
            return None;
        }
        if t.seq != seq_at_probe || caught_up != Some(true) {
            t.idle_since = None;
            return None;
        }
        let since = *t.idle_since.get_or_insert(probe_ms);
        let delay = self.delay.as_millis() as u64;
        let streak = if t.outage {
            self.after_outage.max(self.delay).as_millis() as u64
        } else {
            delay
        };
        if probe_ms.saturating_sub(since) < streak {
            return None;
        }
        t.outage = false;
        let floor = probe_ms.saturating_sub(delay);
        if floor > t.stream_ms {
            t.stream_ms = floor;
            Some(floor)
        } else {
            None
        }
    }
}

/// Milliseconds since the first call on the monotonic clock, wrapping at 2^32 (49
/// days): the difference of two readings less than that apart is exact. Four bytes
/// where an `Instant` takes sixteen (the buffer keeps one per trace).
pub fn monotonic_ms() -> u32 {
    static BASE: OnceLock<std::time::Instant> = OnceLock::new();
    BASE.get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u32
}

/// Now, in ns since the epoch.
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clocks_start_unknown_and_hold_what_was_published() {
        let c = StreamClocks::new();
        assert_eq!(c.get(3), None);
        c.publish(3, 1, 1_000);
        assert_eq!(c.get(3), Some(1_000));
        c.publish(2_000, 1, 5);
        assert_eq!(c.get(2_000), Some(5), "a second segment");
        assert_eq!(c.get(2_001), None);
    }

    #[test]
    fn a_new_assignment_starts_unknown_and_old_ones_cannot_write() {
        let c = StreamClocks::new();
        c.publish(7, 1, 50_000);
        let before = c.read(7);
        assert!(before.covers_epoch(1) && !before.covers_epoch(2));
        c.enter(7, 1);
        assert_eq!(c.get(7), Some(50_000), "entering the same epoch keeps it");
        c.enter(7, 2);
        assert_eq!(c.get(7), None, "the old assignment's time is gone");
        c.publish(7, 1, 60_000);
        assert_eq!(c.get(7), None, "a value of the old assignment is ignored");
        c.publish(7, 2, 40_000);
        assert_eq!(c.get(7), Some(40_000));
        assert!(c.read(7).covers_epoch(2));
        c.enter(7, 1);
        assert_eq!(c.get(7), Some(40_000), "an older epoch cannot reset it");
        // Epochs compare modulo 2^20.
        c.publish(8, EPOCH_MASK, 1);
        c.enter(8, EPOCH_MASK + 1);
        assert_eq!(c.get(8), None, "a wrapped epoch is newer");
    }

    #[test]
    fn records_move_stream_time_forward_only_and_not_from_the_future() {
        let mut t = PartitionTime::default();
        let now = wall_ms() as i64;
        let skew = Duration::from_secs(60);
        assert_eq!(t.record(Some(now - 10_000), skew), Stamp::InTime);
        assert_eq!(t.stream_ms, (now - 10_000) as u64);
        assert_eq!(t.record(Some(now - 20_000), skew), Stamp::InTime);
        assert_eq!(t.stream_ms, (now - 10_000) as u64, "never backwards");
        assert!(matches!(
            t.record(Some(now + 3_600_000), skew),
            Stamp::Ignored { ahead_ms } if ahead_ms >= 3_599_000
        ));
        assert_eq!(
            t.stream_ms,
            (now - 10_000) as u64,
            "an hour ahead is ignored"
        );
        assert_eq!(t.record(None, skew), Stamp::InTime);
        assert!(t.stream_ms >= now as u64, "no timestamp: its arrival");
    }

    /// A record stamped 45 s ahead (inside the skew allowed) moves stream time only to
    /// the wall clock: traces buffered before it keep their whole wait.
    #[test]
    fn a_timestamp_ahead_moves_stream_time_no_further_than_now() {
        let mut t = PartitionTime::default();
        let now = wall_ms() as i64;
        let stamp = t.record(Some(now + 45_000), Duration::from_secs(60));
        assert!(
            matches!(stamp, Stamp::Ahead { ahead_ms } if ahead_ms > 40_000),
            "{stamp:?}"
        );
        assert!(
            t.stream_ms <= wall_ms(),
            "stream time {} past the wall clock {}",
            t.stream_ms,
            wall_ms()
        );
        assert!(t.stream_ms >= now as u64);
        assert_eq!(stamp.ahead_ms().map(|a| a > 40_000), Some(true));
    }

    #[test]
    fn only_an_unbroken_idle_streak_moves_stream_time_and_stays_behind() {
        let idle = IdleTracker {
            delay: Duration::from_secs(1),
            after_outage: Duration::from_secs(1),
        };
        let mut t = PartitionTime {
            stream_ms: 10_000,
            seq: 5,
            ..PartitionTime::default()
        };
        assert_eq!(
            idle.apply(&mut t, 5, 20_000, Some(true)),
            None,
            "streak starts"
        );
        assert_eq!(idle.apply(&mut t, 5, 20_500, Some(true)), None, "too short");
        assert_eq!(idle.apply(&mut t, 5, 21_000, Some(true)), Some(20_000));
        // The broker becomes unreachable: nothing moves, the streak starts over.
        assert_eq!(idle.apply(&mut t, 5, 30_000, None), None);
        assert_eq!(idle.apply(&mut t, 5, 30_100, Some(true)), None);
        assert_eq!(idle.apply(&mut t, 5, 30_600, Some(true)), None);
        // Unread records found, then a record read during a probe.
        assert_eq!(idle.apply(&mut t, 5, 31_200, Some(false)), None);
        assert_eq!(idle.apply(&mut t, 5, 31_300, Some(true)), None);
        assert_eq!(
            idle.apply(&mut t, 4, 32_400, Some(true)),
            None,
            "stale probe"
        );
        assert_eq!(t.stream_ms, 20_000);
    }

    /// After a failed probe the streak must last `after_outage`: producers cut off
    /// by the same outage get that long to deliver what they hold. Once stream time
    /// followed the wall clock again, streaks are `delay` long again.
    #[test]
    fn after_a_failed_probe_the_streak_lasts_the_outage_delay() {
        let idle = IdleTracker {
            delay: Duration::from_secs(1),
            after_outage: Duration::from_secs(10),
        };
        let mut t = PartitionTime {
            stream_ms: 10_000,
            seq: 5,
            ..PartitionTime::default()
        };
        assert_eq!(idle.apply(&mut t, 5, 20_000, None), None, "unreachable");
        assert_eq!(idle.apply(&mut t, 5, 20_500, Some(true)), None, "back");
        assert_eq!(
            idle.apply(&mut t, 5, 21_500, Some(true)),
            None,
            "1 s is not enough"
        );
        // A record read meanwhile does not end the outage's claim.
        t.record(Some(15_000), Duration::from_secs(60));
        assert_eq!(idle.apply(&mut t, 6, 22_000, Some(true)), None);
        assert_eq!(idle.apply(&mut t, 6, 31_900, Some(true)), None, "9.9 s");
        assert_eq!(idle.apply(&mut t, 6, 32_000, Some(true)), Some(31_000));
        assert_eq!(idle.apply(&mut t, 6, 33_000, Some(true)), Some(32_000));
        t.record(Some(16_000), Duration::from_secs(60));
        assert_eq!(idle.apply(&mut t, 7, 40_000, Some(true)), None);
        assert_eq!(
            idle.apply(&mut t, 7, 41_000, Some(true)),
            Some(40_000),
            "no outage since: 1 s again"
        );
    }

    /// An assignment that starts after an outage (a pipeline started again after it
    /// stopped itself) needs the outage's streak before stream time follows the wall
    /// clock, though no probe of its own failed; an ordinary one needs `delay`.
    #[test]
    fn an_assignment_begun_after_an_outage_waits_the_outage_delay() {
        let idle = IdleTracker {
            delay: Duration::from_secs(1),
            after_outage: Duration::from_secs(10),
        };
        for (after_outage, moves_at) in [(true, 30_000), (false, 21_000)] {
            let mut t = PartitionTime::new(1, after_outage);
            t.record(Some(15_000), Duration::from_secs(60));
            let mut moved = None;
            for probe in (20_000..=31_000).step_by(500) {
                if idle.apply(&mut t, 1, probe, Some(true)).is_some() {
                    moved = Some(probe);
                    break;
                }
            }
            assert_eq!(moved, Some(moves_at), "after_outage: {after_outage}");
        }
    }
}
