//! The memory budget: one byte counter for everything tailsift holds on behalf of the
//! input, with high/low watermarks.
//!
//! Input payloads are charged when read and released when the last slice of them is
//! gone, once their spans are copied into the buffer ([`MemoryBudget::charged_bytes`]);
//! shared resource/scope framing likewise; buffered spans, kept traces awaiting
//! acknowledgement ([`Charge`]) and the decision cache are charged by their owners.
//! Above the high watermark the source pauses its partitions and the workers decide
//! their oldest traces early, until usage is back under the low watermark.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;

#[derive(Debug)]
struct Inner {
    used: AtomicU64,
    high: u64,
    low: u64,
    capacity: u64,
    pressure: AtomicBool,
}

/// Shared byte counter with watermarks. Cloning shares it.
#[derive(Debug, Clone)]
pub struct MemoryBudget(Arc<Inner>);

impl MemoryBudget {
    /// A budget of `capacity` bytes; pressure starts at `high` and ends at `low`
    /// (fractions of the capacity).
    pub fn new(capacity: u64, high: f64, low: f64) -> Self {
        MemoryBudget(Arc::new(Inner {
            used: AtomicU64::new(0),
            high: (capacity as f64 * high) as u64,
            low: (capacity as f64 * low) as u64,
            capacity,
            pressure: AtomicBool::new(false),
        }))
    }

    /// Adds `n` bytes.
    pub fn charge(&self, n: u64) {
        self.0.used.fetch_add(n, Ordering::Relaxed);
    }

    /// Removes `n` bytes.
    pub fn release(&self, n: u64) {
        // Saturating: a release never exceeds what was charged, but be robust.
        let _ = self
            .0
            .used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
                Some(u.saturating_sub(n))
            });
    }

    /// Moves the charge held by one owner from `old` to `new` bytes.
    pub fn adjust(&self, old: u64, new: u64) {
        if new > old {
            self.charge(new - old);
        } else {
            self.release(old - new);
        }
    }

    /// Bytes charged now.
    pub fn used(&self) -> u64 {
        self.0.used.load(Ordering::Relaxed)
    }

    /// Usage the workers evict down to under pressure, in bytes.
    pub fn low_watermark(&self) -> u64 {
        self.0.low
    }

    /// The budget in bytes.
    pub fn capacity(&self) -> u64 {
        self.0.capacity
    }

    /// Whether memory pressure is on: set when usage reaches the high watermark,
    /// cleared when it falls to the low one (hysteresis, so input does not flap).
    pub fn pressure(&self) -> bool {
        let used = self.used();
        if used >= self.0.high {
            self.0.pressure.store(true, Ordering::Relaxed);
            true
        } else if used <= self.0.low {
            self.0.pressure.store(false, Ordering::Relaxed);
            false
        } else {
            self.0.pressure.load(Ordering::Relaxed)
        }
    }

    /// Whether workers should decide their oldest traces early: under pressure, or
    /// already halfway from the low to the high watermark. Starting before the high
    /// watermark lets eviction keep pace with the input, so the source rarely has to
    /// pause (each pause drops librdkafka's prefetched data, which is re-fetched).
    pub fn should_evict(&self) -> bool {
        self.pressure() || self.used() > self.0.low / 2 + self.0.high / 2
    }

    /// Whether usage is at or below the low watermark.
    pub fn below_low(&self) -> bool {
        self.used() <= self.0.low
    }

    /// Takes ownership of an input payload and charges its allocation until the last
    /// `Bytes` slicing it is dropped, so the budget counts exactly the input memory
    /// the pipeline keeps alive.
    pub fn charged_bytes(&self, data: Vec<u8>) -> Bytes {
        self.charged_bytes_with(data, 0)
    }

    /// [`MemoryBudget::charged_bytes`], also charging `extra` bytes held alongside
    /// (e.g. the struct that owns the bytes).
    pub fn charged_bytes_with(&self, data: Vec<u8>, extra: u64) -> Bytes {
        if data.is_empty() && extra == 0 {
            return Bytes::new();
        }
        let bytes = data.capacity() as u64 + extra;
        self.charged(data, bytes)
    }

    /// Takes ownership of `owner`, whatever holds the bytes (a vector, a message in
    /// librdkafka's memory), and charges `bytes` for it until the last `Bytes` slicing
    /// it is dropped.
    pub fn charged<T: AsRef<[u8]> + Send + 'static>(&self, owner: T, bytes: u64) -> Bytes {
        let charge = Charge::new(self, bytes);
        Bytes::from_owner(Charged {
            owner,
            _charge: charge,
        })
    }
}

/// A charge released when dropped: held by whatever owns the charged memory.
#[derive(Debug)]
pub struct Charge {
    budget: MemoryBudget,
    bytes: u64,
}

impl Charge {
    /// Charges `bytes` now; releases them on drop.
    pub fn new(budget: &MemoryBudget, bytes: u64) -> Self {
        budget.charge(bytes);
        Charge {
            budget: budget.clone(),
            bytes,
        }
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.budget.release(self.bytes);
    }
}

/// Bytes and their charge, released together.
struct Charged<T> {
    owner: T,
    _charge: Charge,
}

impl<T: AsRef<[u8]>> AsRef<[u8]> for Charged<T> {
    fn as_ref(&self) -> &[u8] {
        self.owner.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_charge_lives_as_long_as_any_slice() {
        let b = MemoryBudget::new(1000, 0.9, 0.5);
        let payload = b.charged_bytes(vec![7u8; 100]);
        assert_eq!(b.used(), 100);
        let slice = payload.slice(10..20);
        drop(payload);
        assert_eq!(b.used(), 100, "a slice keeps the allocation alive");
        drop(slice);
        assert_eq!(b.used(), 0);
    }

    #[test]
    fn pressure_has_hysteresis() {
        let b = MemoryBudget::new(1000, 0.9, 0.5);
        b.charge(800);
        assert!(!b.pressure());
        b.charge(100);
        assert!(b.pressure());
        b.release(200);
        assert!(b.pressure(), "700 is between the watermarks: still on");
        b.release(200);
        assert!(!b.pressure());
    }
}
