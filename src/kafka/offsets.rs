//! Which input offsets are safe to commit.
//!
//! Every input message is *pinned* once per trace it contributed spans to (and once
//! if it goes to the dead-letter topic). A pin is released when that trace is dropped,
//! or when its output (or the dead letter) is acknowledged by the broker. The offset
//! committed for a partition is the lowest offset still pinned, or one past the last
//! message read when none is: a crash at any moment re-reads every message whose
//! spans are not yet safely decided, and nothing else.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::flow::Pin;

/// Locks a tracker shared between threads (the consumer's callbacks, the scanners,
/// the commit task). A poisoned lock means a panic elsewhere already failed the
/// process; the data is still a consistent set of counters, so keep using it.
pub fn lock(t: &Mutex<OffsetTracker>) -> MutexGuard<'_, OffsetTracker> {
    t.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// An assigned partition, as [`OffsetTracker::assigned_partitions`] lists it.
#[derive(Debug, Clone)]
pub struct Assigned {
    /// Its topic.
    pub topic: Arc<str>,
    /// Its number.
    pub partition: i32,
    /// Its tracker slot.
    pub slot: u32,
    /// Its assignment epoch.
    pub epoch: u32,
    /// One past the last message read in this assignment, if any was.
    pub next: Option<i64>,
    /// Its lowest pinned offset (`None`: nothing read is undecided).
    pub lowest_pending: Option<i64>,
}

#[derive(Debug)]
struct Partition {
    topic: Arc<str>,
    partition: i32,
    epoch: u32,
    assigned: bool,
    /// Offset -> pins outstanding.
    pending: BTreeMap<i64, u32>,
    /// One past the last message read.
    next: Option<i64>,
    /// Last offset committed (or handed to the commit call).
    committed: Option<i64>,
}

impl Partition {
    fn safe_offset(&self) -> Option<i64> {
        self.pending.keys().next().copied().or(self.next)
    }
}

/// Per-partition pin counts; owned by the source (behind a mutex only so the
/// rebalance callback, which runs inside the consumer's poll, can commit).
#[derive(Debug, Default)]
pub struct OffsetTracker {
    parts: Vec<Partition>,
    revoked: Vec<(u32, u32)>,
    /// Partitions assigned and paused until their decisions are read back.
    loading: Vec<(String, i32)>,
}

impl OffsetTracker {
    /// Starts (or restarts) tracking a partition after an assignment.
    pub fn assign(&mut self, topic: &str, partition: i32) {
        let slot = self.slot(topic, partition);
        let p = &mut self.parts[slot as usize];
        p.epoch += 1;
        p.assigned = true;
        p.pending.clear();
        p.next = None;
        p.committed = None;
    }

    /// Stops tracking a partition; its outstanding pins become stale. The
    /// `(slot, epoch)` is queued for [`OffsetTracker::take_revoked`].
    pub fn revoke(&mut self, topic: &str, partition: i32) {
        if let Some(slot) = self.find(topic, partition) {
            let p = &mut self.parts[slot as usize];
            if p.assigned {
                self.revoked.push((slot, p.epoch));
            }
            p.assigned = false;
            p.pending.clear();
            p.next = None;
        }
    }

    /// Queues newly assigned partitions whose decisions must be read back first.
    pub fn queue_loading(&mut self, parts: Vec<(String, i32)>) {
        self.loading.extend(parts);
    }

    /// Partitions queued by [`OffsetTracker::queue_loading`] since the last call.
    pub fn take_loading(&mut self) -> Vec<(String, i32)> {
        std::mem::take(&mut self.loading)
    }

    /// The tracker slot of a partition, if it was ever assigned here.
    pub fn slot_of(&self, topic: &str, partition: i32) -> Option<u32> {
        self.find(topic, partition)
    }

    /// The current assignment epoch of a partition, if it is assigned here.
    pub fn epoch_of(&self, topic: &str, partition: i32) -> Option<u32> {
        let p = &self.parts[self.find(topic, partition)? as usize];
        p.assigned.then_some(p.epoch)
    }

    /// Whether a partition is currently assigned here.
    pub fn is_assigned(&self, topic: &str, partition: i32) -> bool {
        self.find(topic, partition)
            .is_some_and(|s| self.parts[s as usize].assigned)
    }

    /// Partitions revoked since the last call, as `(slot, epoch)`.
    pub fn take_revoked(&mut self) -> Vec<(u32, u32)> {
        std::mem::take(&mut self.revoked)
    }

    /// Records a message read at `offset` carrying `pins` pins, and returns the pin
    /// template for it. `None` when the partition is not assigned (a message from a
    /// revoked partition still in flight): the caller must skip it.
    pub fn track(&mut self, topic: &str, partition: i32, offset: i64, pins: u32) -> Option<Pin> {
        let slot = self.find(topic, partition)?;
        let p = &mut self.parts[slot as usize];
        if !p.assigned {
            return None;
        }
        if pins > 0 {
            *p.pending.entry(offset).or_insert(0) += pins;
        }
        p.next = Some(p.next.map_or(offset + 1, |n| n.max(offset + 1)));
        Some(Pin {
            slot,
            epoch: p.epoch,
            offset,
            partition,
        })
    }

    /// Replaces the one guard pin `pin` placed by [`OffsetTracker::track`] with
    /// `pins` pins (one per trace the message turned out to feed). `false` when the
    /// pin is stale: the partition was revoked meanwhile and the message must be
    /// skipped.
    pub fn repin(&mut self, pin: Pin, pins: u32) -> bool {
        let Some(p) = self.parts.get_mut(pin.slot as usize) else {
            return false;
        };
        if !p.assigned || p.epoch != pin.epoch {
            return false;
        }
        if let Some(n) = p.pending.get_mut(&pin.offset) {
            *n += pins;
            *n -= 1;
            if *n == 0 {
                p.pending.remove(&pin.offset);
            }
        }
        true
    }

    /// The topic and partition a current pin belongs to; `None` when it is stale.
    pub fn origin(&self, pin: Pin) -> Option<(Arc<str>, i32)> {
        let p = self.parts.get(pin.slot as usize)?;
        (p.assigned && p.epoch == pin.epoch).then(|| (Arc::clone(&p.topic), p.partition))
    }

    /// Releases one pin. Stale pins (from before a revoke) are ignored.
    pub fn release(&mut self, pin: Pin) {
        let Some(p) = self.parts.get_mut(pin.slot as usize) else {
            return;
        };
        if !p.assigned || p.epoch != pin.epoch {
            return;
        }
        if let Some(n) = p.pending.get_mut(&pin.offset) {
            *n -= 1;
            if *n == 0 {
                p.pending.remove(&pin.offset);
            }
        }
    }

    /// Offsets to commit now: for each assigned partition whose safe offset moved,
    /// `(topic, partition, offset)`. Marks them as committed.
    pub fn to_commit(&mut self) -> Vec<(Arc<str>, i32, i64)> {
        let mut out = Vec::new();
        for p in self.parts.iter_mut().filter(|p| p.assigned) {
            if let Some(safe) = p.safe_offset() {
                if p.committed != Some(safe) {
                    p.committed = Some(safe);
                    out.push((Arc::clone(&p.topic), p.partition, safe));
                }
            }
        }
        out
    }

    /// Per assigned partition, its lowest pinned offset and that offset's pin count.
    pub fn lowest_pending(&self) -> Vec<(i32, i64, u32)> {
        self.parts
            .iter()
            .filter(|p| p.assigned)
            .filter_map(|p| {
                let (o, n) = p.pending.iter().next()?;
                Some((p.partition, *o, *n))
            })
            .collect()
    }

    /// The safe offset of every assigned partition that has one, moved or not,
    /// marked as committed (exactly-once mode sends them all in each transaction).
    pub fn all_safe(&mut self) -> Vec<(Arc<str>, i32, i64)> {
        let mut out = Vec::new();
        for p in self.parts.iter_mut().filter(|p| p.assigned) {
            if let Some(safe) = p.safe_offset() {
                p.committed = Some(safe);
                out.push((Arc::clone(&p.topic), p.partition, safe));
            }
        }
        out
    }

    /// Safe offsets of the given partitions, for a final commit before they are
    /// revoked.
    pub fn safe_offsets(&self, parts: &[(String, i32)]) -> Vec<(Arc<str>, i32, i64)> {
        parts
            .iter()
            .filter_map(|(t, part)| {
                let slot = self.find(t, *part)?;
                let p = &self.parts[slot as usize];
                let safe = p.safe_offset()?;
                (p.assigned && p.committed != Some(safe))
                    .then(|| (Arc::clone(&p.topic), p.partition, safe))
            })
            .collect()
    }

    /// Forgets that these offsets were committed (the commit failed), so the next
    /// round tries again.
    pub fn forget_committed(&mut self, offsets: &[(Arc<str>, i32, i64)]) {
        for (topic, partition, offset) in offsets {
            if let Some(slot) = self.find(topic, *partition) {
                let p = &mut self.parts[slot as usize];
                if p.committed == Some(*offset) {
                    p.committed = None;
                }
            }
        }
    }

    /// Every assigned partition.
    pub fn assigned_partitions(&self) -> Vec<Assigned> {
        self.parts
            .iter()
            .enumerate()
            .filter(|(_, p)| p.assigned)
            .map(|(slot, p)| Assigned {
                topic: Arc::clone(&p.topic),
                partition: p.partition,
                slot: slot as u32,
                epoch: p.epoch,
                next: p.next,
                lowest_pending: p.pending.keys().next().copied(),
            })
            .collect()
    }

    /// Whether `(slot, epoch)` is a current assignment.
    pub fn is_current(&self, slot: u32, epoch: u32) -> bool {
        self.parts
            .get(slot as usize)
            .is_some_and(|p| p.assigned && p.epoch == epoch)
    }

    /// Partitions currently assigned.
    pub fn assigned(&self) -> usize {
        self.parts.iter().filter(|p| p.assigned).count()
    }

    /// Messages (offsets) still pinned, over all partitions.
    pub fn pending_messages(&self) -> usize {
        self.parts.iter().map(|p| p.pending.len()).sum()
    }

    /// Slot of a partition; a linear scan, as an instance owns tens of partitions and
    /// this avoids hashing a topic string per message.
    fn find(&self, topic: &str, partition: i32) -> Option<u32> {
        self.parts
            .iter()
            .position(|p| p.partition == partition && &*p.topic == topic)
            .map(|i| i as u32)
    }

    fn slot(&mut self, topic: &str, partition: i32) -> u32 {
        if let Some(s) = self.find(topic, partition) {
            return s;
        }
        let slot = self.parts.len() as u32;
        self.parts.push(Partition {
            topic: Arc::from(topic),
            partition,
            epoch: 0,
            assigned: false,
            pending: BTreeMap::new(),
            next: None,
            committed: None,
        });
        slot
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_lowest_pinned_then_high_water_mark() {
        let mut t = OffsetTracker::default();
        t.assign("in", 0);
        let a = t.track("in", 0, 10, 2).expect("assigned");
        let b = t.track("in", 0, 11, 1).expect("assigned");
        let _empty = t.track("in", 0, 12, 0).expect("assigned");
        assert_eq!(t.to_commit(), vec![(Arc::from("in"), 0, 10)]);
        t.release(b);
        assert_eq!(t.to_commit(), vec![], "10 is still pinned");
        t.release(a);
        assert_eq!(t.to_commit(), vec![], "10 has one more pin");
        t.release(a);
        assert_eq!(t.to_commit(), vec![(Arc::from("in"), 0, 13)]);
    }

    #[test]
    fn repin_swaps_the_guard_for_one_pin_per_trace() {
        let mut t = OffsetTracker::default();
        t.assign("in", 0);
        let a = t.track("in", 0, 7, 1).expect("assigned");
        let b = t.track("in", 0, 8, 1).expect("assigned");
        assert!(t.repin(b, 0), "a message with no spans");
        assert_eq!(t.to_commit(), vec![(Arc::from("in"), 0, 7)]);
        assert!(t.repin(a, 2));
        t.release(a);
        assert_eq!(t.to_commit(), vec![], "7 still has one of its two pins");
        t.release(a);
        assert_eq!(t.to_commit(), vec![(Arc::from("in"), 0, 9)]);
        let c = t.track("in", 0, 9, 1).expect("assigned");
        t.revoke("in", 0);
        assert!(!t.repin(c, 3), "stale after the revoke");
    }

    #[test]
    fn stale_pins_after_revoke_are_ignored() {
        let mut t = OffsetTracker::default();
        t.assign("in", 3);
        let old = t.track("in", 3, 5, 1).expect("assigned");
        t.revoke("in", 3);
        assert_eq!(t.take_revoked().len(), 1);
        assert!(t.track("in", 3, 6, 1).is_none(), "not assigned any more");
        t.assign("in", 3);
        let new = t.track("in", 3, 5, 1).expect("assigned");
        t.release(old);
        assert_eq!(
            t.to_commit(),
            vec![(Arc::from("in"), 3, 5)],
            "old pin did not release the new one"
        );
        t.release(new);
        assert_eq!(t.to_commit(), vec![(Arc::from("in"), 3, 6)]);
    }

    #[test]
    fn only_moved_offsets_are_committed_again_unless_all_are_asked_for() {
        let mut t = OffsetTracker::default();
        t.assign("in", 0);
        t.track("in", 0, 0, 0).expect("assigned");
        assert_eq!(t.to_commit().len(), 1);
        assert!(t.to_commit().is_empty(), "unchanged");
        let all = t.all_safe();
        assert_eq!(all.len(), 1, "every assigned partition, moved or not");
        t.forget_committed(&all);
        assert_eq!(t.to_commit().len(), 1, "a failed commit is retried");
        assert!(
            t.safe_offsets(&[("in".to_string(), 0)]).is_empty(),
            "committed already"
        );
    }
}
