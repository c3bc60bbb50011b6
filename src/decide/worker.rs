//! The task that owns one buffer shard.

use std::sync::Arc;
use std::time::Duration;

use metrics::{counter, gauge, histogram};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::buffer::{Shard, TraceEntry};
use crate::codec::{encode_trace, RawSpan, Span, TraceId};
use crate::sink::{KeptTrace, SinkMsg};
use crate::source::{Pin, Releases};
use crate::telemetry::names;

use super::{Decider, DecisionCache, Verdict};

/// What the source sends a shard worker.
#[derive(Debug)]
pub enum ShardMsg {
    /// Spans of one input message that hash to this shard, sorted by trace id; each
    /// run of one trace id carries one unit of `pin`.
    Spans {
        /// The input message's pin.
        pin: Pin,
        /// The spans.
        spans: Vec<Span>,
    },
    /// A partition assignment was revoked: forget traces pinned only to it.
    Revoked {
        /// Tracker slot.
        slot: u32,
        /// Assignment epoch.
        epoch: u32,
    },
}

/// Settings of a shard worker.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Time from first span to decision.
    pub decision_wait: Duration,
    /// Time from root span to decision, if earlier.
    pub after_root: Option<Duration>,
    /// Decisions remembered for late spans.
    pub cache_capacity: usize,
    /// Largest output record.
    pub max_message_bytes: usize,
}

/// Owns one [`Shard`]: inserts spans, decides due traces, forwards outcomes.
pub struct ShardWorker {
    shard: Shard,
    cache: DecisionCache,
    decider: Arc<Decider>,
    rx: mpsc::Receiver<ShardMsg>,
    sink: mpsc::Sender<SinkMsg>,
    releases: Releases,
    max_message_bytes: usize,
    tick: Duration,
    /// Last values published to the buffer gauges, to publish deltas.
    published: (usize, usize, usize),
}

impl ShardWorker {
    /// A worker reading `rx`, sending kept traces to `sink` and releasing pins of
    /// dropped ones through `releases`.
    pub fn new(
        cfg: &WorkerConfig,
        decider: Arc<Decider>,
        rx: mpsc::Receiver<ShardMsg>,
        sink: mpsc::Sender<SinkMsg>,
        releases: Releases,
    ) -> Self {
        let shortest = cfg
            .after_root
            .unwrap_or(cfg.decision_wait)
            .min(cfg.decision_wait);
        ShardWorker {
            shard: Shard::new(cfg.decision_wait, cfg.after_root),
            cache: DecisionCache::new(cfg.cache_capacity),
            decider,
            rx,
            sink,
            releases,
            max_message_bytes: cfg.max_message_bytes,
            // Decide within ~10% of the wait, but never spin.
            tick: (shortest / 10).clamp(Duration::from_millis(5), Duration::from_millis(100)),
            published: (0, 0, 0),
        }
    }

    /// Runs until the source closes the channel. Traces still buffered then are not
    /// decided: their input offsets were never committed, so whoever consumes the
    /// partitions next re-reads and decides them whole.
    pub async fn run(mut self) {
        let mut tick = tokio::time::interval(self.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut due = Vec::new();
        loop {
            tokio::select! {
                biased;
                _ = tick.tick() => {
                    self.shard.take_due(Instant::now(), &mut due);
                    for entry in due.drain(..) {
                        if self.decide(entry).await.is_err() {
                            return;
                        }
                    }
                    self.publish_gauges();
                }
                msg = self.rx.recv() => match msg {
                    Some(ShardMsg::Spans { pin, spans }) => {
                        if self.insert(pin, spans).await.is_err() {
                            return;
                        }
                    }
                    Some(ShardMsg::Revoked { slot, epoch }) => {
                        self.shard.release_partition(slot, epoch);
                    }
                    None => break,
                },
            }
        }
        self.shard.drain();
        self.publish_gauges();
    }

    async fn insert(&mut self, pin: Pin, spans: Vec<Span>) -> Result<(), Closed> {
        let now = Instant::now();
        let mut spans = spans.into_iter().peekable();
        while let Some(first) = spans.next() {
            let id = first.trace_id;
            let group = std::iter::once(first)
                .chain(std::iter::from_fn(|| spans.next_if(|s| s.trace_id == id)));
            match self.cache.get(&id).cloned() {
                None => self.shard.insert(id, group, pin, now),
                Some(verdict) => self.late(id, verdict, group.collect(), pin).await?,
            }
        }
        Ok(())
    }

    /// Spans of a trace already decided: kept ones are forwarded, dropped ones dropped.
    async fn late(
        &mut self,
        id: TraceId,
        verdict: Verdict,
        group: Vec<Span>,
        pin: Pin,
    ) -> Result<(), Closed> {
        let decision = if verdict.keep {
            "sampled"
        } else {
            "not_sampled"
        };
        counter!(names::LATE_SPANS, "decision" => decision).increment(group.len() as u64);
        if verdict.keep {
            let raw: Vec<RawSpan> = group.into_iter().map(|s| s.raw).collect();
            self.send_kept(id, &raw, vec![pin], verdict.policy).await
        } else {
            self.releases.release(vec![pin]);
            Ok(())
        }
    }

    async fn decide(&mut self, entry: TraceEntry) -> Result<(), Closed> {
        histogram!(names::DECISION_LATENCY).record(entry.first_seen.elapsed().as_secs_f64());
        let verdict = self.decider.decide(&entry.summary);
        let id = entry.summary.trace_id;
        self.cache.insert(id, verdict.clone());
        if verdict.keep {
            self.send_kept(id, &entry.spans, entry.pins, verdict.policy)
                .await
        } else {
            self.releases.release(entry.pins);
            Ok(())
        }
    }

    async fn send_kept(
        &mut self,
        trace_id: TraceId,
        spans: &[RawSpan],
        pins: Vec<Pin>,
        policy: Option<Arc<str>>,
    ) -> Result<(), Closed> {
        let payloads = encode_trace(spans, self.max_message_bytes);
        let kept = KeptTrace {
            trace_id,
            payloads,
            pins,
            policy: policy.unwrap_or_else(|| Arc::from("")),
            spans: spans.len(),
        };
        self.sink
            .send(SinkMsg::Kept(kept))
            .await
            .map_err(|_| Closed)
    }

    fn publish_gauges(&mut self) {
        let now = (self.shard.traces(), self.shard.spans(), self.shard.bytes());
        let delta = |new: usize, old: usize| new as f64 - old as f64;
        gauge!(names::BUFFER_TRACES).increment(delta(now.0, self.published.0));
        gauge!(names::BUFFER_SPANS).increment(delta(now.1, self.published.1));
        gauge!(names::BUFFER_BYTES).increment(delta(now.2, self.published.2));
        self.published = now;
    }
}

/// The sink is gone: the pipeline is shutting down.
struct Closed;
