//! The exactly-once transaction, as the source sees it: the sink produces kept
//! traces, dead letters and decision records into it; the source commits it together
//! with the input offsets those records made safe.

use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::TopicPartitionList;

use super::Pin;

/// Whether any of a message's pins still belongs to a current assignment.
pub type PinCheck = Box<dyn Fn(&[Pin]) -> bool + Send + Sync>;

/// Why a transaction could not be committed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("transaction {step} failed: {error}")]
pub struct TxnError {
    /// The call that failed.
    pub step: &'static str,
    /// librdkafka's error.
    pub error: String,
}

/// What the source needs of the transactions: telling them which pins are current,
/// learning that they failed, and committing the one in progress with the input
/// offsets.
pub trait TxnCommit: Send + Sync {
    /// Tells the transactions which pins are current (the source's offset tracker):
    /// records of traces whose partitions were revoked must not enter a transaction
    /// committed after the revoke. Only the first call takes effect.
    fn set_pin_check(&self, check: PinCheck);

    /// Why the transactions stopped, once they have.
    fn failed(&self) -> Option<TxnError>;

    /// Commits the transaction in progress with `offsets` (the safe input offsets of
    /// every assigned partition) as the consumer group `group`'s, and begins the next.
    /// Blocking: call it off the runtime or from a rebalance callback.
    ///
    /// # Errors
    /// [`TxnError`] naming the step that failed; every later call fails too.
    fn commit(
        &self,
        offsets: &TopicPartitionList,
        group: Option<&ConsumerGroupMetadata>,
    ) -> Result<(), TxnError>;
}
