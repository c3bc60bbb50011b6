//! The policy set in force, replaced as a whole when the configuration is reloaded.
//!
//! A [`Generation`] is what the scanners test spans with (the attribute predicates)
//! and what the shard workers decide with (the [`Decider`]). [`LivePolicies`]
//! publishes a new one; every scanner and worker holds a [`PolicyWatch`] and switches
//! to the newest generation before it handles its next message, so traces decided
//! from then on are decided by the new set, and traces buffered at the reload stay
//! buffered (their attribute hits carry over: see `codec::AttrMatchers::successor`).

use std::sync::Arc;

use tokio::sync::watch;

use super::Decider;
use crate::codec::AttrMatchers;
use crate::config::Config;
use crate::policy::{PolicyError, PolicySet};

/// One version of the policy set.
#[derive(Debug)]
pub struct Generation {
    /// Counts reloads: 0 for the set started with.
    pub number: u64,
    /// Decides traces.
    pub decider: Decider,
    /// The attribute predicates the scanners test.
    pub keys: AttrMatchers,
}

impl Generation {
    /// The policy set of `cfg`, replacing `previous` if there is one (attribute
    /// predicates keep their bits across the two).
    ///
    /// # Errors
    /// [`PolicyError`] if the set cannot be built.
    pub fn build(cfg: &Config, previous: Option<&Generation>) -> Result<Generation, PolicyError> {
        let set = PolicySet::build_after(&cfg.policies, previous.map(|g| &g.keys))?;
        Ok(Generation {
            number: previous.map_or(0, |g| g.number + 1),
            keys: set.keys.clone(),
            decider: Decider::new(set, cfg.sample_on_first_match),
        })
    }
}

/// Publishes the generation in force.
#[derive(Debug)]
pub struct LivePolicies {
    tx: watch::Sender<Arc<Generation>>,
}

impl LivePolicies {
    /// Starts with `first`.
    pub fn new(first: Generation) -> Self {
        LivePolicies {
            tx: watch::Sender::new(Arc::new(first)),
        }
    }

    /// A handle that follows the generation in force.
    pub fn watch(&self) -> PolicyWatch {
        let rx = self.tx.subscribe();
        let current = Arc::clone(&rx.borrow());
        PolicyWatch { rx, current }
    }

    /// The generation in force.
    pub fn current(&self) -> Arc<Generation> {
        Arc::clone(&self.tx.borrow())
    }

    /// Builds the policy set of `cfg` and puts it in force; returns its number.
    ///
    /// # Errors
    /// [`PolicyError`] if the set cannot be built: the current one stays in force.
    pub fn replace(&self, cfg: &Config) -> Result<u64, PolicyError> {
        let next = Generation::build(cfg, Some(&self.current()))?;
        let number = next.number;
        self.tx.send_replace(Arc::new(next));
        Ok(number)
    }
}

/// A scanner's or worker's view of the generation in force.
#[derive(Debug)]
pub struct PolicyWatch {
    rx: watch::Receiver<Arc<Generation>>,
    current: Arc<Generation>,
}

impl PolicyWatch {
    /// The generation this holder uses.
    pub fn get(&self) -> &Generation {
        &self.current
    }

    /// Whether a newer generation was published than the one in use.
    pub fn has_news(&self) -> bool {
        self.rx.has_changed().unwrap_or(false)
    }

    /// Switches to a newer generation if one was published; returns the one it
    /// replaced, so the holder can carry its state over.
    pub fn refresh(&mut self) -> Option<Arc<Generation>> {
        if !self.rx.has_changed().unwrap_or(false) {
            return None;
        }
        let next = Arc::clone(&self.rx.borrow_and_update());
        Some(std::mem::replace(&mut self.current, next))
    }
}
