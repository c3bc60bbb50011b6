//! The consumer's librdkafka callbacks: rebalances, commits, statistics, errors.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics::gauge;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tracing::{info, warn};

use std::sync::atomic::{AtomicU64, Ordering};

use super::{lock, OffsetTracker};
use crate::flow::TxnCommit;
use crate::telemetry::{names, Health, LogLimiter};

/// Callbacks of the input consumer. Shares the offset tracker with the source task
/// so a revoke can commit what is safe before the partition moves.
pub struct SourceContext {
    tracker: Arc<Mutex<OffsetTracker>>,
    health: Arc<Health>,
    /// Whether newly assigned partitions wait for their decisions to be read back.
    restore_decisions: bool,
    /// Exactly-once mode: a revoke commits the transaction in progress.
    txn: Option<Arc<dyn TxnCommit>>,
    /// Input messages not keyed by trace id so far (the source counts), and how
    /// many the last statistics saw.
    unkeyed: (Arc<AtomicU64>, AtomicU64),
}

impl SourceContext {
    pub(super) fn new(
        tracker: Arc<Mutex<OffsetTracker>>,
        health: Arc<Health>,
        restore_decisions: bool,
        txn: Option<Arc<dyn TxnCommit>>,
        unkeyed: Arc<AtomicU64>,
    ) -> Self {
        SourceContext {
            tracker,
            health,
            restore_decisions,
            txn,
            unkeyed: (unkeyed, AtomicU64::new(0)),
        }
    }

    /// Warns (once a minute at most) when input not keyed by trace id arrived since
    /// the last statistics and other members of the group own some of the input
    /// partitions: each instance then sees only part of such a trace, and decides
    /// (and writes) its part alone.
    fn check_unkeyed(&self, stats: &Statistics) {
        let seen = self.unkeyed.0.load(Ordering::Relaxed);
        let before = self.unkeyed.1.swap(seen, Ordering::Relaxed);
        if seen == before {
            return;
        }
        let Some(assigned) = stats.cgrp.as_ref().map(|g| i64::from(g.assignment_size)) else {
            return;
        };
        let partitions: i64 = stats
            .topics
            .values()
            .map(|t| t.partitions.keys().filter(|p| **p >= 0).count() as i64)
            .sum();
        if assigned >= partitions {
            return; // this instance reads every input partition: nothing is split
        }
        static LOG: LogLimiter = LogLimiter::new(Duration::from_secs(60));
        if let Some(suppressed) = LOG.allow() {
            warn!(message = "Input not keyed by trace id, and other instances read some of its partitions: such traces are split between instances and sampled in parts. Key the input by trace id (the Collector's kafka exporter: partition_traces_by_id: true) or put the route stage in front.", unkeyed_messages = seen - before, assigned_partitions = assigned, input_partitions = partitions, suppressed_since_last = suppressed);
        }
    }
}

impl ClientContext for SourceContext {
    fn stats(&self, stats: Statistics) {
        self.check_unkeyed(&stats);
        let up = stats.brokers.values().any(|b| b.state == "UP");
        let why = (!up && self.health.last_error().is_empty())
            .then(|| "no broker connection is up".to_string());
        self.health.set_kafka_up(up, why);
        let mut lag: BTreeMap<&str, i64> = BTreeMap::new();
        for (name, topic) in &stats.topics {
            // Messages not yet read: high watermark minus the position handed to
            // tailsift (librdkafka's own consumer_lag counts from the committed
            // offset, which also includes messages read but still pinned).
            let l: i64 = topic
                .partitions
                .values()
                .filter(|p| p.app_offset >= 0 && p.hi_offset >= 0)
                .map(|p| (p.hi_offset - p.app_offset).max(0))
                .sum();
            *lag.entry(name).or_default() += l;
        }
        for (topic, l) in lag {
            gauge!(names::CONSUMER_LAG, "topic" => topic.to_string()).set(l as f64);
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.health.note_error(&error, reason);
        static LOG: LogLimiter = LogLimiter::new(Duration::from_secs(10));
        if let Some(suppressed) = LOG.allow() {
            warn!(message = "Kafka consumer error.", error = %error, reason, suppressed_since_last = suppressed);
        }
    }
}

impl ConsumerContext for SourceContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(tpl) = rebalance else {
            return;
        };
        let parts: Vec<(String, i32)> = tpl
            .elements()
            .iter()
            .map(|e| (e.topic().to_string(), e.partition()))
            .collect();
        if let Some(txn) = &self.txn {
            // The transaction commits under the generation that owned the partitions:
            // their next owner starts exactly where this output ends.
            super::commit_transaction(consumer, &self.tracker, &**txn, &self.health, &parts);
        }
        let safe = if self.txn.is_some() {
            Vec::new()
        } else {
            lock(&self.tracker).safe_offsets(&parts)
        };
        if !safe.is_empty() {
            let mut commit = TopicPartitionList::new();
            for (t, p, o) in &safe {
                let _ = commit.add_partition_offset(t, *p, Offset::Offset(*o));
            }
            // Synchronous on purpose: the partition must not move before its safe
            // offset is stored, or the next owner re-reads more than needed.
            if let Err(e) = consumer.commit(&commit, CommitMode::Sync) {
                warn!(message = "Commit on revoke failed; the next owner re-reads from the previous commit.", error = %e);
            }
        }
        let mut t = lock(&self.tracker);
        for (topic, partition) in &parts {
            t.revoke(topic, *partition);
        }
        self.health.set_assigned(t.assigned());
        info!(message = "Partitions revoked.", count = parts.len(), partitions = ?parts.iter().map(|(_, p)| *p).collect::<Vec<_>>());
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                if self.restore_decisions && tpl.count() > 0 {
                    // Before the first fetch: nothing of them is read until their
                    // decisions are back in the caches.
                    if let Err(e) = consumer.pause(tpl) {
                        warn!(message = "Cannot pause partitions to restore their decisions.", error = %e);
                    }
                }
                let mut t = lock(&self.tracker);
                for e in tpl.elements() {
                    t.assign(e.topic(), e.partition());
                }
                self.health.set_joined();
                if self.restore_decisions {
                    t.queue_loading(
                        tpl.elements()
                            .iter()
                            .map(|e| (e.topic().to_string(), e.partition()))
                            .collect(),
                    );
                }
                self.health.set_assigned(t.assigned());
                info!(
                    message = "Partitions assigned.",
                    count = tpl.count(),
                    total = t.assigned(),
                    partitions = ?tpl.elements().iter().map(|e| e.partition()).collect::<Vec<_>>()
                );
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => warn!(message = "Rebalance error.", error = %e),
        }
    }
}
