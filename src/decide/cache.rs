//! Remembers recent decisions so late spans follow their trace's decision.

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasherDefault;

use crate::buffer::TraceIdHasher;
use crate::codec::TraceId;

use super::Verdict;

/// A bounded map of trace id to verdict; the oldest decision is forgotten first.
#[derive(Debug)]
pub struct DecisionCache {
    map: HashMap<TraceId, Verdict, BuildHasherDefault<TraceIdHasher>>,
    order: VecDeque<TraceId>,
    capacity: usize,
}

impl DecisionCache {
    /// A cache holding at most `capacity` decisions (0 disables it).
    pub fn new(capacity: usize) -> Self {
        DecisionCache {
            map: HashMap::default(),
            order: VecDeque::new(),
            capacity,
        }
    }

    /// Records a decision.
    pub fn insert(&mut self, id: TraceId, verdict: Verdict) {
        if self.capacity == 0 {
            return;
        }
        if self.map.insert(id, verdict).is_none() {
            self.order.push_back(id);
            if self.order.len() > self.capacity {
                if let Some(old) = self.order.pop_front() {
                    self.map.remove(&old);
                }
            }
        }
    }

    /// The decision for a trace, if still remembered.
    pub fn get(&self, id: &TraceId) -> Option<&Verdict> {
        self.map.get(id)
    }

    /// Decisions remembered.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forgets_oldest_beyond_capacity() {
        let mut c = DecisionCache::new(2);
        let v = Verdict {
            keep: true,
            policy: None,
        };
        for i in 1..=3u8 {
            c.insert(TraceId([i; 16]), v.clone());
        }
        assert_eq!(c.len(), 2);
        assert!(c.get(&TraceId([1; 16])).is_none());
        assert!(c.get(&TraceId([3; 16])).is_some());
    }
}
