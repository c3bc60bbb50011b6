//! A value replaced as a whole while the pipeline runs, and the views each task
//! holds of it: the policy generation (read by the shard workers) and its attribute
//! predicates (read by the scanners) travel this way.

use std::sync::Arc;

use tokio::sync::watch;

use crate::codec::AttrMatchers;

/// Publishes the version in force of a `T`.
#[derive(Debug)]
pub struct Publisher<T> {
    tx: watch::Sender<Arc<T>>,
}

impl<T> Publisher<T> {
    /// Starts with `first`.
    pub fn new(first: T) -> Self {
        Publisher {
            tx: watch::Sender::new(Arc::new(first)),
        }
    }

    /// A view that follows the version in force.
    pub fn watch(&self) -> Watch<T> {
        let rx = self.tx.subscribe();
        let current = Arc::clone(&rx.borrow());
        Watch { rx, current }
    }

    /// The version in force.
    pub fn current(&self) -> Arc<T> {
        Arc::clone(&self.tx.borrow())
    }

    /// Puts `next` in force; views switch to it when they next refresh.
    pub fn publish(&self, next: T) {
        self.tx.send_replace(Arc::new(next));
    }
}

/// One task's view of a published value: it keeps the version it took until it
/// refreshes, so one message is handled with one version throughout.
#[derive(Debug)]
pub struct Watch<T> {
    rx: watch::Receiver<Arc<T>>,
    current: Arc<T>,
}

impl<T> Watch<T> {
    /// The version this holder uses.
    pub fn get(&self) -> &T {
        &self.current
    }

    /// Whether a newer version was published than the one in use.
    pub fn has_news(&self) -> bool {
        self.rx.has_changed().unwrap_or(false)
    }

    /// Switches to a newer version if one was published; returns the one it
    /// replaced, so the holder can carry its state over.
    pub fn refresh(&mut self) -> Option<Arc<T>> {
        if !self.rx.has_changed().unwrap_or(false) {
            return None;
        }
        let next = Arc::clone(&self.rx.borrow_and_update());
        Some(std::mem::replace(&mut self.current, next))
    }
}

/// What the scanners test spans with: the attribute predicates of policy generation
/// `number` (published after the generation itself, so a shard never sees spans
/// scanned for a generation it cannot switch to yet).
#[derive(Debug)]
pub struct ScanKeys {
    /// The policy generation these predicates belong to.
    pub number: u64,
    /// The predicates.
    pub keys: AttrMatchers,
}
