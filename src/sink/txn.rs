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
//! that output, is rebuilt from what was committed: the process starts it again.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use metrics::counter;
use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::TopicPartitionList;
use tokio::sync::Notify;
use tracing::{error, warn};

use super::{
    dead_letter_headers, decision_record, header, kept_headers, refused_headers, with_source,
    ProducerContext, SinkMsg, Topics, HEADER_ERROR, HEADER_PAYLOAD_OMITTED,
};
use crate::clock::now_ns;
use crate::flow::{DecisionRecord, Pin, PinCheck, TxnCommit, TxnError};
use crate::telemetry::names;

/// How long one transactional call may take before it counts as failed.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The transaction in progress, shared by the sink (which produces into it) and the
/// source (which commits it with the input offsets).
pub struct Transactions {
    producer: FutureProducer<ProducerContext>,
    /// Produces hold it shared while enqueuing; a commit holds it alone.
    gate: RwLock<()>,
    /// Set once a transaction could not be committed: nothing more is produced.
    failed: Mutex<Option<TxnError>>,
    /// Set by the source: records of traces whose partitions were revoked must not
    /// enter a transaction committed after the revoke.
    current: OnceLock<PinCheck>,
    /// The order records are enqueued in: the order the sink received them.
    turns: Turns,
}

/// Hands out enqueue turns in the sink's receive order (1, 2, ...).
///
/// The sink delivers several messages at once, and each waits for the gate while a
/// commit holds it; without turns, whichever woke first after the commit enqueued
/// first. A trace's dropped decision record and the kept record of its promotion
/// could then land in the decisions topic in the wrong order, and the partition's
/// next owner, restoring the last record, promoted the trace a second time.
#[derive(Debug)]
struct Turns {
    /// The next turn, and turns that finished before it (given up early).
    state: Mutex<(u64, BTreeSet<u64>)>,
    changed: Notify,
}

impl Turns {
    fn new() -> Self {
        Turns {
            state: Mutex::new((1, BTreeSet::new())),
            changed: Notify::new(),
        }
    }

    fn next(&self) -> u64 {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .0
    }

    /// Ends turn `n`, at once or, if earlier turns are still open, when they end.
    fn finish(&self, n: u64) {
        {
            let mut s = self
                .state
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if n == s.0 {
                s.0 += 1;
                let (next, early) = &mut *s;
                while early.remove(next) {
                    *next += 1;
                }
            } else if n > s.0 {
                s.1.insert(n);
            }
        }
        self.changed.notify_waiters();
    }
}

/// One delivery's place in the enqueue order; ended when dropped, whatever path
/// the delivery took.
pub(super) struct Turn<'a> {
    turns: &'a Turns,
    n: u64,
    finished: bool,
}

impl Turn<'_> {
    /// Waits until every earlier delivery has enqueued its records (or given up).
    async fn wait(&self) {
        loop {
            let changed = self.turns.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.turns.next() >= self.n {
                return;
            }
            changed.await;
        }
    }

    /// Lets the next delivery enqueue.
    fn finish(&mut self) {
        if !self.finished {
            self.finished = true;
            self.turns.finish(self.n);
        }
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.finish();
    }
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
            current: OnceLock::new(),
            turns: Turns::new(),
        })
    }

    /// Holds the gate as a commit does (tests: a commit in progress).
    #[cfg(test)]
    pub(super) fn hold_gate(&self) -> std::sync::RwLockWriteGuard<'_, ()> {
        self.gate
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The place in the enqueue order of the sink's `n`th delivery (from 1).
    pub(super) fn turn(&self, n: u64) -> Turn<'_> {
        Turn {
            turns: &self.turns,
            n,
            finished: false,
        }
    }

    /// Enqueues `records` into the open transaction together (no commit between
    /// them), provided some pin of theirs is still current, once every delivery the
    /// sink received before this one has enqueued (`turn`), then waits for their
    /// deliveries. `false`: not sent (stale, or the transactions failed) or not all
    /// delivered; the caller then releases nothing, as the transaction will abort or
    /// the partition's next owner decides the trace again.
    async fn send_together(
        &self,
        producer: &FutureProducer<ProducerContext>,
        records: &[Rec<'_>],
        pins: &[Pin],
        turn: &mut Turn<'_>,
    ) -> bool {
        turn.wait().await;
        let deliveries = loop {
            if self.failed().is_some() {
                return false;
            }
            match self.enqueue_all(producer, records, pins) {
                Enqueue::Sent(d) => break d,
                Enqueue::Stale => {
                    static LOG: crate::telemetry::LogLimiter =
                        crate::telemetry::LogLimiter::new(Duration::from_secs(10));
                    if let Some(suppressed) = LOG.allow() {
                        tracing::info!(message = "Not sending records of a trace whose partition was revoked; its next owner decides it.", suppressed_since_last = suppressed, pins = ?pins.first());
                    }
                    return false;
                }
                Enqueue::Gated => tokio::time::sleep(Duration::from_millis(2)).await,
            }
        };
        turn.finish();
        let mut ok = true;
        for d in deliveries {
            match d.await {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => {
                    counter!(names::PRODUCE_ERRORS, "error" => super::error_label(&e)).increment(1);
                    warn!(message = "Delivery in a transaction failed; the transaction will abort.", error = %e);
                    ok = false;
                }
                Err(_) => ok = false,
            }
        }
        ok
    }

    /// Enqueues every record under one hold of the gate.
    fn enqueue_all(
        &self,
        producer: &FutureProducer<ProducerContext>,
        records: &[Rec<'_>],
        pins: &[Pin],
    ) -> Enqueue {
        let Ok(_open) = self.gate.try_read() else {
            return Enqueue::Gated;
        };
        if !self.current.get().is_none_or(|current| current(pins)) {
            return Enqueue::Stale;
        }
        let mut deliveries = Vec::with_capacity(records.len());
        for r in records {
            let mut record = FutureRecord::<[u8], [u8]>::to(r.topic)
                .payload(r.payload)
                .headers(r.headers.clone());
            if let Some(k) = r.key {
                record = record.key(k);
            }
            if let Some(p) = r.partition {
                record = record.partition(p);
            }
            match producer.send_result(record) {
                Ok(d) => deliveries.push(d),
                Err((e, _)) => {
                    // Part of the batch may be in the transaction already: it must
                    // not commit without the rest.
                    drop(_open);
                    self.abandon(&format!("cannot enqueue a record: {e}"));
                    return Enqueue::Stale;
                }
            }
        }
        Enqueue::Sent(deliveries)
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

/// One record of a batch sent together.
struct Rec<'a> {
    topic: &'a str,
    partition: Option<i32>,
    key: Option<&'a [u8]>,
    payload: &'a [u8],
    headers: OwnedHeaders,
}

enum Enqueue {
    Sent(Vec<rdkafka::producer::DeliveryFuture>),
    /// A commit holds the gate.
    Gated,
    /// Not sent: the pins are stale, or the transactions failed.
    Stale,
}

/// Delivers one message in exactly-once mode and returns the pins to release. A kept
/// trace's records, its spans set apart for the dead-letter topic and its decision
/// record go into one transaction together, so no commit (on revoke, say) can make
/// the output visible without the decision that keeps the next owner from writing it
/// again. A record over the local limit is dead-lettered without its payload rather
/// than sent, as a broker refusal would abort the transaction.
pub(super) async fn deliver(
    producer: &FutureProducer<ProducerContext>,
    topics: &Arc<Topics>,
    txn: &Transactions,
    msg: SinkMsg,
    mut turn: Turn<'_>,
) -> Vec<Pin> {
    let limit = topics.local_limit.unwrap_or(usize::MAX);
    let omitted = |len: usize| len.to_string();
    match msg {
        SinkMsg::AfterOutput { pin, .. } => vec![pin],
        SinkMsg::Dropped(d) => {
            let Some(dec) = decision_record(topics, DecisionRecord::of_dropped(&d, now_ns()))
            else {
                return d.pins;
            };
            let rec = Rec {
                topic: &dec.topic,
                partition: Some(dec.partition),
                key: Some(&d.trace_id.0),
                payload: &dec.payload,
                headers: OwnedHeaders::new(),
            };
            if txn
                .send_together(producer, &[rec], &d.pins, &mut turn)
                .await
            {
                counter!(names::DECISIONS_RECORDED, "decision" => dec.label).increment(1);
                d.pins
            } else {
                Vec::new()
            }
        }
        SinkMsg::Kept(kept) => {
            let key = kept.trace_id.to_hex();
            let headers = kept_headers(&kept);
            let output = kept.topic.as_deref().unwrap_or(&topics.output);
            let (dlq, sizes): (&str, Vec<String>) = (
                &topics.dead_letter,
                kept.payloads.iter().map(|p| omitted(p.len())).collect(),
            );
            let too_large = format!("record larger than kafka.max_message_bytes for {output}");
            let mut records = Vec::new();
            for (p, size) in kept.payloads.iter().zip(&sizes) {
                if p.len() <= limit {
                    records.push(Rec {
                        topic: output,
                        partition: None,
                        key: Some(key.as_bytes()),
                        payload: p,
                        headers: headers.clone(),
                    });
                } else {
                    warn!(message = "Kept record over kafka.max_message_bytes: dead-lettered without its payload (a broker refusal would abort the transaction).", trace_id = %kept.trace_id, bytes = p.len());
                    records.push(Rec {
                        topic: dlq,
                        partition: None,
                        key: Some(key.as_bytes()),
                        payload: &[],
                        headers: with_source(
                            headers
                                .clone()
                                .insert(header(HEADER_ERROR, &too_large))
                                .insert(header(HEADER_PAYLOAD_OMITTED, size)),
                            &kept.pins,
                        ),
                    });
                }
            }
            let reason = kept.rejected.as_ref().map_or("", |r| r.reason.as_str());
            for p in kept.rejected.iter().flat_map(|r| &r.payloads) {
                records.push(Rec {
                    topic: dlq,
                    partition: None,
                    key: Some(key.as_bytes()),
                    payload: if p.len() <= limit { p } else { &[] },
                    headers: refused_headers(reason, &kept.policy, &kept.pins),
                });
            }
            let decision = kept
                .record_decision
                .then(|| decision_record(topics, DecisionRecord::of_kept(&kept, now_ns())))
                .flatten();
            if let Some(d) = &decision {
                records.push(Rec {
                    topic: &d.topic,
                    partition: Some(d.partition),
                    key: Some(&kept.trace_id.0),
                    payload: &d.payload,
                    headers: OwnedHeaders::new(),
                });
            }
            if !txn
                .send_together(producer, &records, &kept.pins, &mut turn)
                .await
            {
                return Vec::new();
            }
            tracing::trace!(message = "Kept trace delivered in the transaction.", trace_id = %kept.trace_id, spans = kept.spans, forced = ?kept.forced, recorded = decision.is_some(), pins = ?kept.pins.iter().map(|p| (p.partition, p.epoch, p.offset)).collect::<Vec<_>>());
            let bytes: usize = kept.payloads.iter().map(Vec::len).sum();
            counter!(names::RECORDS_PRODUCED).increment(kept.payloads.len() as u64);
            counter!(names::SPANS_PRODUCED).increment(kept.spans as u64);
            counter!(names::BYTES_PRODUCED).increment(bytes as u64);
            if let Some(d) = decision {
                counter!(names::DECISIONS_RECORDED, "decision" => d.label).increment(1);
            }
            kept.pins
        }
        SinkMsg::DeadLetter(d) => {
            let mut headers = dead_letter_headers(&d);
            let size = omitted(d.payload.len());
            let payload: &[u8] = if d.payload.len() <= limit {
                &d.payload
            } else {
                headers = headers.insert(header(HEADER_PAYLOAD_OMITTED, &size));
                &[]
            };
            let rec = Rec {
                topic: &topics.dead_letter,
                partition: None,
                key: d.key.as_deref(),
                payload,
                headers,
            };
            if txn
                .send_together(producer, &[rec], &[d.pin], &mut turn)
                .await
            {
                counter!(names::MESSAGES_DEAD_LETTERED, "reason" => d.label).increment(1);
                vec![d.pin]
            } else {
                Vec::new()
            }
        }
    }
}

impl TxnCommit for Transactions {
    fn set_pin_check(&self, check: PinCheck) {
        let _ = self.current.set(check);
    }

    /// Why the transactions stopped, once they have.
    fn failed(&self) -> Option<TxnError> {
        self.failed.lock().ok().and_then(|f| f.clone())
    }

    /// On failure the transaction is aborted and every later call fails at once.
    fn commit(
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
}
