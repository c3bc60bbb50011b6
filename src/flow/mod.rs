//! What travels between the stages, in one leaf module: no stage defines a type another
//! stage receives, so no two stages import each other (the decide worker owning its
//! buffer shard is the one stage-to-stage use).
//!
//! ```text
//!            ShardMsg::Spans (pins, message, spans, stream time)
//!  source ──────────────────────────────────────────▶ decide (worker + buffer shard)
//!    │  ▲  ShardMsg::Decisions (Restored) / Revoked        │
//!    │  │                                                  │ SinkMsg::Kept (KeptTrace,
//!    │  │ Releases (pins: dropped, or delivered)           │   Charge) / Dropped
//!    │  └──────────────────────────────────────────┐       ▼   / AfterOutput
//!    │  SinkMsg::DeadLetter                        └───── sink ──▶ output, dead-letter
//!    └─────────────────────────────────────────────────▶        and decisions topics
//!                                                        (DecisionRecord)
//! ```
//!
//! A [`Pin`] is one unit of "this input message is not safe to commit yet"; it rides
//! with the spans it covers, and comes back through [`Releases`] when their trace is
//! dropped or its output acknowledged. A buffered trace's [`TraceSummary`] is what
//! the buffer keeps up to date and the policies read. The memory budget those stages
//! charge is its own module, [`crate::budget`]; stream time is [`crate::clock`].
//!
//! In exactly-once mode the source's rebalance callbacks commit the sink's
//! transaction with the input offsets through [`TxnCommit`].
//!
//! Values replaced while running (the policy generation after a reload, and the
//! attribute predicates the scanners test) are published through [`Publisher`] and
//! read through [`Watch`].

pub(crate) mod kept;
mod live;
mod record;
mod revision;
mod summary;
mod txn;

use std::sync::Arc;

use bytes::Bytes;
use rdkafka::message::OwnedHeaders;
use tokio::sync::mpsc;

use crate::budget::Charge;
use crate::codec::{Message, Span, TraceId};

pub use live::{Publisher, ScanKeys, Watch};
pub use record::DecisionRecord;
pub use revision::{Evidence, Found, Incomplete, Pieces, Reread, Rereads};
pub use summary::{TraceSummary, MAX_ONE_CLOCK_MS};
pub use txn::{PinCheck, TxnCommit, TxnError};

/// A reference to one pin on an input message, carried with the spans it covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pin {
    /// Index of the partition in the tracker.
    pub slot: u32,
    /// Assignment generation of the partition; pins from before a revoke are stale.
    pub epoch: u32,
    /// The message offset.
    pub offset: i64,
    /// The message's partition (for the decisions topic).
    pub partition: i32,
}

/// How far a trace's input is in the output once its record is written: the first
/// pin's partition and one past its last message there holding spans of the trace
/// (messages of a partition are read in order). `None` without pins.
pub fn output_reach(pins: &[Pin]) -> Option<(i32, i64)> {
    let first = pins.first()?;
    let below = pins
        .iter()
        .filter(|p| p.partition == first.partition)
        .map(|p| p.offset + 1)
        .max()
        .unwrap_or(0);
    Some((first.partition, below))
}

/// The sending side of the release path: decided or delivered pins go back to the
/// source. Unbounded on purpose: its length is bounded by the pins outstanding, and a
/// bounded channel here could deadlock the pipeline (source waits on workers, workers
/// on the sink, the sink on the source).
#[derive(Clone, Debug)]
pub struct Releases(mpsc::UnboundedSender<Vec<Pin>>);

impl Releases {
    /// A release path and its receiving end (for the source).
    pub fn channel() -> (Releases, mpsc::UnboundedReceiver<Vec<Pin>>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Releases(tx), rx)
    }

    /// Releases pins; after shutdown (no receiver) this is a no-op.
    pub fn release(&self, pins: Vec<Pin>) {
        if !pins.is_empty() {
            let _ = self.0.send(pins);
        }
    }
}

/// What the source sends a shard worker.
#[derive(Debug)]
pub enum ShardMsg {
    /// Spans of one input message that hash to this shard, sorted by trace id; each
    /// run of one trace id carries one unit of `pin`.
    Spans {
        /// The input message's pin.
        pin: Pin,
        /// The input message's topic.
        topic: Arc<str>,
        /// The message the spans refer to.
        message: Message,
        /// The spans.
        spans: Vec<Span>,
        /// The stream time (ms) of the message's partition once it was read.
        at: u64,
        /// The policy generation whose attribute predicates the spans were tested
        /// with (see `LivePolicies`).
        generation: u64,
    },
    /// Decisions read back from the decisions topic for newly assigned partitions.
    Decisions {
        /// The decisions.
        decisions: Vec<Restored>,
        /// The assignments, `(slot, epoch)`, they were read back for. Each one's
        /// previous assignment of the slot here has ended: the worker acts on that
        /// revoke first if its copy through the scanners has not come yet, so that
        /// the late copy cannot wipe the decisions just restored.
        assignments: Vec<(u32, u32)>,
    },
    /// A partition assignment was revoked: forget traces pinned only to it.
    Revoked {
        /// Tracker slot.
        slot: u32,
        /// Assignment epoch.
        epoch: u32,
    },
}

/// A decision read back from the decisions topic, for the worker of the trace's shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    /// The trace.
    pub trace_id: TraceId,
    /// The policy that kept it; `None`: dropped.
    pub policy: Option<Arc<str>>,
    /// For a kept trace: `(input partition, offset)` below which its spans are in the
    /// output already.
    pub output_below: Option<(i32, i64)>,
    /// For a dropped trace: what it was judged on and where its input lies, so late
    /// spans can promote it (`None` for records written before these were).
    pub dropped: Option<(Evidence, Pieces)>,
}

/// What the sink is asked to deliver.
#[derive(Debug)]
pub enum SinkMsg {
    /// A kept trace.
    Kept(KeptTrace),
    /// A dropped trace whose decision goes to the decisions topic before its input
    /// pins are released.
    Dropped(DroppedTrace),
    /// An input message that could not be decoded.
    DeadLetter(DeadLetter),
    /// A re-read input message whose spans of `trace_id` are already in the output
    /// (or on their way there): its pin is released once no delivery of that trace is
    /// still awaiting its acknowledgement, so the commit never passes input whose
    /// output could still be lost.
    AfterOutput {
        /// The kept trace.
        trace_id: TraceId,
        /// The re-read message's pin.
        pin: Pin,
    },
}

/// A kept trace, encoded.
#[derive(Debug)]
pub struct KeptTrace {
    /// The trace; its hex form is the record key.
    pub trace_id: TraceId,
    /// OTLP payloads, one unless the trace exceeded the maximum record size.
    pub payloads: Vec<Vec<u8>>,
    /// Input pins released once every payload is acknowledged.
    pub pins: Vec<Pin>,
    /// The policy that kept it.
    pub policy: Arc<str>,
    /// The topic it goes to; `None`: the output topic.
    pub topic: Option<Arc<str>>,
    /// Why it was decided early, if it was.
    pub forced: Option<&'static str>,
    /// Spans in the payloads.
    pub spans: usize,
    /// Kept spans that standard OTLP decoders would refuse, bound for the dead-letter
    /// topic instead of the output.
    pub rejected: Option<Rejected>,
    /// The payloads' memory charge, released when the trace is delivered.
    pub charge: Charge,
    /// Whether its decision is to be recorded (with a decisions topic; late spans of a
    /// kept trace are recorded too, moving the output offset of its record forward).
    pub record_decision: bool,
    /// Where its input lies (for the decision record; `None`: from the pins).
    pub pieces: Option<Pieces>,
    /// What the policies judged it on (for the decision record).
    pub evidence: Evidence,
    /// Set when it had been dropped and late spans promoted it.
    pub promoted: Option<Promotion>,
}

/// A kept trace that had been dropped: why it was promoted, and whether all of it
/// could be read again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Promotion {
    /// The `tailsift.promoted` header's value and the `reason` label of
    /// `tailsift_promotions_total`: `late` (late spans made a policy keep it) or
    /// `request` (`tailsift promote`).
    pub reason: &'static str,
    /// Why some of its earlier pieces are missing, if some are.
    pub incomplete: Option<Incomplete>,
}

/// Spans of a kept trace set apart for the dead-letter topic, and why.
#[derive(Debug)]
pub struct Rejected {
    /// OTLP payloads of the spans, under their resource and scope.
    pub payloads: Vec<Vec<u8>>,
    /// The dead letters' reason header.
    pub reason: String,
}

/// A dropped trace, for the decisions topic.
#[derive(Debug)]
pub struct DroppedTrace {
    /// The trace.
    pub trace_id: TraceId,
    /// Input pins released once the decision is acknowledged.
    pub pins: Vec<Pin>,
    /// Where its input lies, late spans included (`None`: from the pins).
    pub pieces: Option<Pieces>,
    /// What it was dropped on, late spans included, so a later owner judges its
    /// late spans with it.
    pub evidence: Evidence,
}

/// An input message that could not be decoded.
#[derive(Debug)]
pub struct DeadLetter {
    /// The original bytes.
    pub payload: Bytes,
    /// The original key.
    pub key: Option<Bytes>,
    /// The original headers, kept ahead of tailsift's own.
    pub headers: Option<OwnedHeaders>,
    /// Why it was refused.
    pub reason: String,
    /// The `reason` label of `tailsift_messages_dead_lettered_total`.
    pub label: &'static str,
    /// Where it came from.
    pub topic: Arc<str>,
    /// Where it came from.
    pub partition: i32,
    /// Where it came from.
    pub offset: i64,
    /// Released once the dead letter is acknowledged.
    pub pin: Pin,
}
