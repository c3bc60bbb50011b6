//! Where a shard keeps its trace records: in pages of a fixed number of records, kept
//! dense (a removal moves the last record into the gap and frees a page once it is
//! empty), found by trace id through an index of 4-byte positions.
//!
//! A hash map of `TraceId -> TraceEntry` held each record in a table slot with its
//! key and left a third of the slots empty on average (the table grows by doubling),
//! and moved every record each time it grew. Here the table holds only positions, so
//! its empty slots cost 5 bytes each, records never move when it grows, and record
//! memory follows the number of traces, not its peak.

use std::hash::BuildHasher;
use std::mem::size_of;

use hashbrown::HashTable;

use super::{TraceEntry, TraceIdHasher};
use crate::codec::TraceId;

/// Records per page: 512 records of 144 bytes, 72 KiB a page.
const PAGE: usize = 512;

/// The records of one shard and their index.
#[derive(Debug, Default)]
pub(super) struct Store {
    /// Positions (`page * PAGE + place`) of the records, keyed by their trace id.
    index: HashTable<u32>,
    /// Every page but the last is full, allocated for `PAGE` records exactly; the
    /// last grows by doubling up to `PAGE` (a power of two).
    pages: Vec<Vec<TraceEntry>>,
    len: usize,
}

/// The record at position `pos` of `pages`.
fn record(pages: &[Vec<TraceEntry>], pos: u32) -> &TraceEntry {
    let pos = pos as usize;
    &pages[pos / PAGE][pos % PAGE]
}

fn hash(id: &TraceId) -> u64 {
    std::hash::BuildHasherDefault::<TraceIdHasher>::default().hash_one(id)
}

impl Store {
    /// The record at `pos` (valid until the next removal).
    pub(super) fn at(&self, pos: u32) -> &TraceEntry {
        record(&self.pages, pos)
    }

    /// The record at `pos` (from [`Store::position`] or [`Store::insert`], valid
    /// until the next removal).
    pub(super) fn at_mut(&mut self, pos: u32) -> &mut TraceEntry {
        let pos = pos as usize;
        &mut self.pages[pos / PAGE][pos % PAGE]
    }

    /// Where the record of `id` is, if held.
    pub(super) fn position(&self, id: &TraceId) -> Option<u32> {
        self.index
            .find(hash(id), |&p| self.at(p).summary.trace_id == *id)
            .copied()
    }

    /// The record of `id`.
    pub(super) fn get(&self, id: &TraceId) -> Option<&TraceEntry> {
        self.position(id).map(|p| self.at(p))
    }

    /// Adds `entry`, whose trace id is not held yet; returns its position.
    pub(super) fn insert(&mut self, entry: TraceEntry) -> u32 {
        debug_assert!(self.position(&entry.summary.trace_id).is_none());
        let h = hash(&entry.summary.trace_id);
        // Positions are u32: a shard holds far fewer than 4 billion traces (each costs
        // over 100 bytes of a memory budget).
        let pos = self.len as u32;
        if self.len % PAGE == 0 {
            self.pages.push(Vec::new());
        }
        if let Some(page) = self.pages.last_mut() {
            page.push(entry);
        }
        self.len += 1;
        let pages = &self.pages;
        self.index
            .insert_unique(h, pos, |&p| hash(&record(pages, p).summary.trace_id));
        pos
    }

    /// Takes the record of `id` out; with it, where the last record moved to fill
    /// its place (`None` when it was the last).
    pub(super) fn remove(&mut self, id: &TraceId) -> Option<(TraceEntry, Option<u32>)> {
        // One probe finds and removes the index entry.
        let pages = &self.pages;
        let (pos, _) = self
            .index
            .find_entry(hash(id), |&p| record(pages, p).summary.trace_id == *id)
            .ok()?
            .remove();
        self.take(pos)
    }

    /// Takes the record at `pos` out, as [`Store::remove`] does.
    pub(super) fn remove_at(&mut self, pos: u32) -> Option<(TraceEntry, Option<u32>)> {
        if pos as usize >= self.len {
            return None;
        }
        let h = hash(&self.at(pos).summary.trace_id);
        self.index.find_entry(h, |&p| p == pos).ok()?.remove();
        self.take(pos)
    }

    /// Moves the last record into `pos`, whose index entry is already gone, and
    /// returns the record that was there.
    fn take(&mut self, pos: u32) -> Option<(TraceEntry, Option<u32>)> {
        let last = (self.len - 1) as u32;
        if pos != last {
            // The last record fills the gap: point its index entry at the gap.
            let moved = hash(&self.at(last).summary.trace_id);
            if let Some(p) = self.index.find_mut(moved, |&p| p == last) {
                *p = pos;
            }
        }
        let Some(mut tail) = self.pages.last_mut().and_then(Vec::pop) else {
            return None; // cannot happen: `len` counts the records of the pages
        };
        self.len -= 1;
        if self.len % PAGE == 0 {
            self.pages.pop();
        }
        if pos == last {
            return Some((tail, None));
        }
        std::mem::swap(self.at_mut(pos), &mut tail);
        Some((tail, Some(pos)))
    }

    /// Every record.
    pub(super) fn iter(&self) -> impl Iterator<Item = &TraceEntry> {
        self.pages.iter().flatten()
    }

    /// Every record, to change (not their trace ids).
    pub(super) fn iter_mut(&mut self) -> impl Iterator<Item = &mut TraceEntry> {
        self.pages.iter_mut().flatten()
    }

    /// Every record with its position, to change (not their trace ids).
    pub(super) fn iter_mut_at(&mut self) -> impl Iterator<Item = (u32, &mut TraceEntry)> {
        // Every page but the last holds `PAGE` records, so the n-th is at n.
        (0u32..).zip(self.pages.iter_mut().flatten())
    }

    /// Records held.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// Forgets every record.
    pub(super) fn clear(&mut self) {
        self.index = HashTable::new();
        self.pages = Vec::new();
        self.len = 0;
    }

    /// Bytes allocated for the index and the pages (not what records point to).
    pub(super) fn bytes(&self) -> usize {
        // hashbrown allocates a power of two of buckets, at most 7/8 of them used,
        // a control byte each.
        let cap = self.index.capacity();
        let buckets = if cap == 0 {
            0
        } else {
            (cap * 8 / 7).next_power_of_two()
        };
        let records = match self.pages.split_last() {
            Some((last, full)) => full.len() * PAGE + last.capacity(),
            None => 0,
        };
        buckets * (size_of::<u32>() + 1)
            + self.pages.capacity() * size_of::<Vec<TraceEntry>>()
            + records * size_of::<TraceEntry>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buffer::Chunk;
    use crate::flow::TraceSummary;

    fn id(n: u32) -> TraceId {
        let mut b = [0u8; 16];
        b[..4].copy_from_slice(&n.to_le_bytes());
        b[8..12].copy_from_slice(&n.wrapping_mul(0x9E37_79B9).to_le_bytes());
        TraceId(b)
    }

    fn record(n: u32) -> TraceEntry {
        TraceEntry {
            summary: TraceSummary::new(id(n)),
            first: Chunk::empty(),
            more: thin_vec::ThinVec::new(),
            first_seen_ms: 0,
            home: n,
            place: 0,
            root_lead: 0,
            deadline: u64::from(n),
        }
    }

    #[test]
    fn removals_anywhere_keep_every_other_record_findable_and_free_emptied_pages() {
        let mut s = Store::default();
        let n = 3 * PAGE as u32 + 7;
        for i in 0..n {
            assert!(s.position(&id(i)).is_none());
            let p = s.insert(record(i));
            assert_eq!(s.at_mut(p).home, i);
            assert_eq!(s.position(&id(i)), Some(p));
        }
        let full = s.bytes();
        // Remove two thirds, from everywhere: every third from the front, the rest of
        // the last page first, so records move from the end into gaps.
        let mut gone = Vec::new();
        for i in (0..n).rev().filter(|i| i % 3 != 0) {
            let last = s.at((s.len() - 1) as u32).summary.trace_id;
            let (e, moved) = s.remove(&id(i)).expect("held");
            match moved {
                Some(p) => assert_eq!(
                    s.at(p).summary.trace_id,
                    last,
                    "the last record fills the gap"
                ),
                None => assert_eq!(e.summary.trace_id, last),
            }
            assert_eq!((e.summary.trace_id, e.home), (id(i), i));
            gone.push(i);
        }
        assert!(s.remove(&id(1)).is_none(), "removed already");
        assert_eq!(s.len(), (n as usize).div_ceil(3));
        for i in 0..n {
            match s.get(&id(i)) {
                Some(e) => {
                    assert_eq!(i % 3, 0);
                    assert_eq!((e.summary.trace_id, e.home), (id(i), i));
                }
                None => assert_ne!(i % 3, 0, "trace {i} lost"),
            }
        }
        assert_eq!(s.iter().count(), s.len());
        assert_eq!(s.pages.len(), s.len().div_ceil(PAGE));
        assert!(s.bytes() < full, "emptied pages are freed");
        for i in (0..n).filter(|i| i % 3 == 0) {
            assert!(s.remove(&id(i)).is_some());
        }
        assert_eq!((s.len(), s.pages.len(), s.iter().count()), (0, 0, 0));
    }
}
