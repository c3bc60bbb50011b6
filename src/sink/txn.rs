//! Exactly-once mode: the sink's producer is transactional and the input offsets are
//! committed inside its transactions.
//!
//! One transaction is open at a time. Every kept record, decision record and dead
//! letter is produced into it. The source ends it every commit interval, on every
//! revoke and at shutdown: with the producer gated (no record enqueued meanwhile) it
//! sends the safe input offsets of every assigned partition with the consumer's group
//! metadata, commits, and begins the next one. So a `read_committed` reader sees a
//! kept trace and its decision record together or not at all, and the input offsets
//! move only with the output they cover. A span re-read after a crash or rebalance
//! belongs to a trace whose decision is either committed (the new owner reads it back
//! from the decisions topic and does not output it again) or aborted with its output
//! (and is decided again).
//!
//! Fencing: the group coordinator refuses offsets sent with a stale generation, and
//! the transaction coordinator aborts a transaction open longer than
//! `transaction.timeout.ms`. A frozen instance that wakes after its partitions moved
//! fails its next commit; every transaction carries the offsets of every assigned
//! partition, so that check happens even when nothing moved. A transaction that
//! cannot commit is aborted, and the pipeline stops so that its state, which assumed
//! that output, is rebuilt from what was committed: the instance exits with status 4
//! for its supervisor to restart it.

use std::sync::{Mutex, RwLock, RwLockReadGuard};
use std::time::Duration;

use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::TopicPartitionList;
use tracing::error;

use super::ProducerContext;

/// How long one transactional call may take before it counts as failed.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a transaction could not be committed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("transaction {step} failed: {error}")]
pub struct TxnError {
    /// The call that failed.
    pub step: &'static str,
    /// librdkafka's error.
    pub error: String,
}

/// The transaction in progress, shared by the sink (which produces into it) and the
/// source (which commits it with the input offsets).
pub struct Transactions {
    producer: FutureProducer<ProducerContext>,
    /// Produces hold it shared while enqueuing; a commit holds it alone.
    gate: RwLock<()>,
    /// Set once a transaction could not be committed: nothing more is produced.
    failed: Mutex<Option<TxnError>>,
}

impl Transactions {
    /// Initialises the transactional producer (fencing any earlier producer with its
    /// `transactional.id`) and begins the first transaction. Blocking.
    ///
    /// # Errors
    /// When the transaction coordinator cannot be reached or refuses the producer.
    pub(super) fn start(producer: FutureProducer<ProducerContext>) -> Result<Self, TxnError> {
        producer
            .init_transactions(CALL_TIMEOUT)
            .map_err(|e| step("init", &e))?;
        producer
            .begin_transaction()
            .map_err(|e| step("begin", &e))?;
        Ok(Transactions {
            producer,
            gate: RwLock::new(()),
            failed: Mutex::new(None),
        })
    }

    /// The gate for enqueuing one record: `None` while a commit runs (try again
    /// shortly) or once the transactions failed (see [`Transactions::failed`]).
    pub(super) fn try_enqueue(&self) -> Option<RwLockReadGuard<'_, ()>> {
        self.gate.try_read().ok()
    }

    /// Why the transactions stopped, once they have.
    pub fn failed(&self) -> Option<TxnError> {
        self.failed.lock().ok().and_then(|f| f.clone())
    }

    /// Commits the transaction in progress with `offsets` (the safe input offsets of
    /// every assigned partition) and begins the next. Blocking: call it off the
    /// runtime or from a rebalance callback. On failure the transaction is aborted
    /// and every later call fails at once.
    ///
    /// # Errors
    /// [`TxnError`] naming the step that failed.
    pub fn commit(
        &self,
        offsets: &TopicPartitionList,
        group: Option<&ConsumerGroupMetadata>,
    ) -> Result<(), TxnError> {
        let _alone = self
            .gate
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(e) = self.failed() {
            return Err(e);
        }
        let result = self.commit_alone(offsets, group);
        if let Err(e) = &result {
            error!(message = "Transaction failed; aborting it. Its records stay invisible to read_committed readers and its input uncommitted; the pipeline stops to be restarted from what was committed.", error = %e);
            let _ = self.producer.abort_transaction(CALL_TIMEOUT);
            if let Ok(mut f) = self.failed.lock() {
                *f = Some(e.clone());
            }
        }
        result
    }

    fn commit_alone(
        &self,
        offsets: &TopicPartitionList,
        group: Option<&ConsumerGroupMetadata>,
    ) -> Result<(), TxnError> {
        if offsets.count() > 0 {
            let group = group.ok_or_else(|| TxnError {
                step: "send_offsets",
                error: "the consumer has no group metadata (not a member of its group)".to_string(),
            })?;
            self.producer
                .send_offsets_to_transaction(offsets, group, CALL_TIMEOUT)
                .map_err(|e| step("send_offsets", &e))?;
        }
        self.producer
            .commit_transaction(CALL_TIMEOUT)
            .map_err(|e| step("commit", &e))?;
        self.producer
            .begin_transaction()
            .map_err(|e| step("begin", &e))
    }

    /// Marks the transactions failed without a commit (the pipeline is stopping on
    /// another error) and aborts the one in progress.
    pub fn abandon(&self, why: &str) {
        let _alone = self
            .gate
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if self.failed().is_none() {
            let _ = self.producer.abort_transaction(CALL_TIMEOUT);
            if let Ok(mut f) = self.failed.lock() {
                *f = Some(TxnError {
                    step: "abandon",
                    error: why.to_string(),
                });
            }
        }
    }
}

impl std::fmt::Debug for Transactions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transactions")
            .field("failed", &self.failed())
            .finish_non_exhaustive()
    }
}

fn step(step: &'static str, e: &rdkafka::error::KafkaError) -> TxnError {
    TxnError {
        step,
        error: e.to_string(),
    }
}
