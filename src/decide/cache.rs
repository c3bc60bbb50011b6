//! Remembers recent decisions so late spans follow their trace's decision.
//!
//! Keys are 64-bit fingerprints of the trace id, not the id: 8 bytes instead of 16,
//! and a collision needs ~2^32 decisions remembered at once to become likely (with
//! 10^6 entries the chance that a new trace is mistaken for a decided one is ~10^-13).
//! The cache charges its allocation to the memory budget through its owner.

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasherDefault;
use std::mem::size_of;

use crate::buffer::TraceIdHasher;
use crate::codec::TraceId;
use crate::flow::{Evidence, Pieces};

use super::Verdict;

const DROPPED: u16 = u16::MAX;

/// The slot of decisions read back from the decisions topic: committed, never
/// forgotten on a revoke.
pub const RESTORED: u32 = u32::MAX;

/// A bounded map of trace id to verdict; the oldest decision is forgotten first.
#[derive(Debug)]
pub struct DecisionCache {
    map: HashMap<u64, u16, BuildHasherDefault<TraceIdHasher>>,
    /// For kept decisions read back from the decisions topic: (input partition,
    /// offset) below which the trace's spans are in the output already.
    output: HashMap<u64, (i32, i64), BuildHasherDefault<TraceIdHasher>>,
    /// For dropped decisions: what the trace was judged on and where its input
    /// lies, so late spans can revise the decision.
    dropped: HashMap<u64, (Evidence, Pieces), BuildHasherDefault<TraceIdHasher>>,
    /// Insertion order, with the partition slot each decision was made for
    /// ([`RESTORED`] for decisions read back).
    order: VecDeque<(u64, u32)>,
    capacity: usize,
}

fn fingerprint(id: &TraceId) -> u64 {
    id.shard_hash()
}

impl DecisionCache {
    /// A cache holding at most `capacity` decisions (0 disables it).
    pub fn new(capacity: usize) -> Self {
        DecisionCache {
            map: HashMap::default(),
            output: HashMap::default(),
            dropped: HashMap::default(),
            order: VecDeque::new(),
            capacity,
        }
    }

    /// Records a decision made for a trace of partition slot `slot`.
    pub fn insert(&mut self, id: &TraceId, verdict: Verdict, slot: u32) {
        if self.capacity == 0 {
            return;
        }
        let fp = fingerprint(id);
        if verdict.keep() && !self.dropped.is_empty() {
            // A kept decision read back after a dropped one of the same trace (a
            // promotion): nothing to revise any more.
            self.dropped.remove(&fp);
        }
        if self
            .map
            .insert(fp, verdict.policy().unwrap_or(DROPPED))
            .is_none()
        {
            self.order.push_back((fp, slot));
            if self.order.len() > self.capacity {
                if let Some((old, _)) = self.order.pop_front() {
                    self.map.remove(&old);
                    self.output.remove(&old);
                    self.dropped.remove(&old);
                }
            }
        }
    }

    /// The decision for a trace, if still remembered.
    pub fn get(&self, id: &TraceId) -> Option<Verdict> {
        self.map
            .get(&fingerprint(id))
            .map(|&p| Verdict::new((p != DROPPED).then_some(p)))
    }

    /// Remembers, for a remembered kept decision, where its output ends (see
    /// `DecisionRecord::output_below_offset`).
    pub fn set_output(&mut self, id: &TraceId, output: (i32, i64)) {
        let fp = fingerprint(id);
        if self.map.contains_key(&fp) {
            self.output.insert(fp, output);
        }
    }

    /// Where a remembered kept decision's output ends, if known.
    pub fn output(&self, id: &TraceId) -> Option<(i32, i64)> {
        self.output.get(&fingerprint(id)).copied()
    }

    /// Remembers, for a remembered dropped decision, what it was judged on and where
    /// its input lies.
    pub fn set_dropped(&mut self, id: &TraceId, evidence: Evidence, pieces: Pieces) {
        let fp = fingerprint(id);
        if self.map.get(&fp) == Some(&DROPPED) {
            self.dropped.insert(fp, (evidence, pieces));
        }
    }

    /// What a remembered dropped decision was judged on and where its input lies,
    /// to add late spans to.
    pub fn dropped_mut(&mut self, id: &TraceId) -> Option<&mut (Evidence, Pieces)> {
        self.dropped.get_mut(&fingerprint(id))
    }

    /// Turns a remembered decision into `verdict` (a promotion), forgetting what
    /// its drop was judged on; a trace not remembered is inserted.
    pub fn revise(&mut self, id: &TraceId, verdict: Verdict, slot: u32) {
        let fp = fingerprint(id);
        self.dropped.remove(&fp);
        match self.map.get_mut(&fp) {
            Some(p) => *p = verdict.policy().unwrap_or(DROPPED),
            None => self.insert(id, verdict, slot),
        }
    }

    /// Renumbers the kept decisions' policies (after the policy set was replaced).
    pub fn remap(&mut self, new_index: impl Fn(u16) -> u16) {
        for p in self.map.values_mut() {
            if *p != DROPPED {
                *p = new_index(*p);
            }
        }
    }

    /// Forgets the decisions made here for partition slot `slot` (exactly-once mode,
    /// on revoke: some may never commit; those that did are read back from the
    /// decisions topic if the partition comes back).
    pub fn forget_slot(&mut self, slot: u32) {
        let (map, output, dropped) = (&mut self.map, &mut self.output, &mut self.dropped);
        self.order.retain(|&(fp, s)| {
            if s == slot {
                map.remove(&fp);
                output.remove(&fp);
                dropped.remove(&fp);
            }
            s != slot
        });
    }

    /// Decisions remembered.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Bytes allocated: the maps' slots and control bytes (at their 7/8 load
    /// factor) and the eviction queue. (The input topic names the dropped
    /// decisions share are not counted: one per topic.)
    pub fn allocated_bytes(&self) -> usize {
        self.map.capacity() * (size_of::<(u64, u16)>() + 1) * 8 / 7
            + self.output.capacity() * (size_of::<(u64, (i32, i64))>() + 1) * 8 / 7
            + self.dropped.capacity() * (size_of::<(u64, (Evidence, Pieces))>() + 1) * 8 / 7
            + self.order.capacity() * size_of::<(u64, u32)>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forgets_oldest_beyond_capacity() {
        let mut c = DecisionCache::new(2);
        for i in 1..=3u8 {
            c.insert(&TraceId([i; 16]), Verdict::new(Some(0)), 0);
        }
        assert_eq!(c.len(), 2);
        assert!(c.get(&TraceId([1; 16])).is_none());
        assert_eq!(c.get(&TraceId([3; 16])), Some(Verdict::new(Some(0))));
        c.insert(&TraceId([4; 16]), Verdict::new(None), 1);
        assert_eq!(c.get(&TraceId([4; 16])).map(|v| v.keep()), Some(false));
        assert!(c.allocated_bytes() > 0);
    }

    #[test]
    fn a_revoke_forgets_that_partitions_local_decisions_only() {
        let mut c = DecisionCache::new(10);
        c.insert(&TraceId([1; 16]), Verdict::new(Some(0)), 3);
        c.set_output(&TraceId([1; 16]), (3, 10));
        c.insert(&TraceId([2; 16]), Verdict::new(Some(0)), 4);
        c.insert(&TraceId([3; 16]), Verdict::new(None), RESTORED);
        c.forget_slot(3);
        assert!(c.get(&TraceId([1; 16])).is_none());
        assert!(c.output(&TraceId([1; 16])).is_none());
        assert!(c.get(&TraceId([2; 16])).is_some());
        assert!(c.get(&TraceId([3; 16])).is_some());
        assert_eq!(c.len(), 2);
    }
}
