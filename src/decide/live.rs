//! The policy set in force, replaced as a whole when the configuration is reloaded.
//!
//! A [`Generation`] is what the scanners test spans with (the attribute predicates)
//! and what the shard workers decide with (the [`Decider`]). [`LivePolicies`]
//! publishes a new one; every worker holds a [`PolicyWatch`] (every scanner a view of
//! its predicates, [`ScanKeys`]) and switches
//! to the newest generation before it handles its next message, so traces decided
//! from then on are decided by the new set, and traces buffered at the reload stay
//! buffered (their attribute hits carry over: see `codec::AttrMatchers::successor`).

use std::sync::Arc;

use super::Decider;
use crate::codec::AttrMatchers;
use crate::config::Config;
use crate::flow::{Publisher, ScanKeys, Watch};
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

/// Publishes the generation in force, and its attribute predicates for the
/// scanners.
#[derive(Debug)]
pub struct LivePolicies {
    generations: Publisher<Generation>,
    scan_keys: Publisher<ScanKeys>,
}

/// A shard worker's view of the generation in force.
pub type PolicyWatch = Watch<Generation>;

impl LivePolicies {
    /// Starts with `first`.
    pub fn new(first: Generation) -> Self {
        let keys = ScanKeys {
            number: first.number,
            keys: first.keys.clone(),
        };
        LivePolicies {
            generations: Publisher::new(first),
            scan_keys: Publisher::new(keys),
        }
    }

    /// A handle that follows the generation in force.
    pub fn watch(&self) -> PolicyWatch {
        self.generations.watch()
    }

    /// What the scanners follow: the attribute predicates in force.
    pub fn scan_keys(&self) -> &Publisher<ScanKeys> {
        &self.scan_keys
    }

    /// The generation in force.
    pub fn current(&self) -> Arc<Generation> {
        self.generations.current()
    }

    /// Builds the policy set of `cfg` and puts it in force; returns its number.
    ///
    /// # Errors
    /// [`PolicyError`] if the set cannot be built: the current one stays in force.
    pub fn replace(&self, cfg: &Config) -> Result<u64, PolicyError> {
        let next = Generation::build(cfg, Some(&self.current()))?;
        let number = next.number;
        let keys = ScanKeys {
            number,
            keys: next.keys.clone(),
        };
        // The workers' generation first: a shard handed spans scanned with the new
        // predicates can always switch to the generation they belong to.
        self.generations.publish(next);
        self.scan_keys.publish(keys);
        Ok(number)
    }
}
