//! The decisions topic's record: `proto/tailsift/v1/decision.proto`, and both ends of
//! it: the record the sink writes for a decided trace ([`DecisionRecord::decided`],
//! [`DecisionRecord::partition_for`]) and what the source hands the workers when it
//! reads one back ([`DecisionRecord::restored`]). The Kafka I/O stays in those stages.

use std::sync::Arc;

use super::{output_reach, DroppedTrace, Evidence, KeptTrace, Pieces, Pin, Restored};
use crate::codec::TraceId;

/// One decided trace, as written to the decisions topic (`tailsift.v1.Decision`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct DecisionRecord {
    /// The trace id, 16 bytes.
    #[prost(bytes = "vec", tag = "1")]
    pub trace_id: Vec<u8>,
    /// True when the trace was kept.
    #[prost(bool, tag = "2")]
    pub kept: bool,
    /// The policy that kept it; empty when dropped.
    #[prost(string, tag = "3")]
    pub policy: String,
    /// When it was decided, ns since the Unix epoch.
    #[prost(fixed64, tag = "4")]
    pub decided_unix_nano: u64,
    /// The input partition the trace's spans were read from.
    #[prost(int32, tag = "5")]
    pub input_partition: i32,
    /// For a kept trace: its spans in `input_partition` below this input offset are
    /// in the output already (0: nothing known).
    #[prost(int64, tag = "6")]
    pub output_below_offset: i64,
    /// The input topic the trace's spans were read from.
    #[prost(string, tag = "7")]
    pub input_topic: String,
    /// Offset of the first input message holding spans of the trace in
    /// `input_partition`.
    #[prost(int64, tag = "8")]
    pub first_offset: i64,
    /// Offset of the last input message holding spans of the trace there.
    #[prost(int64, tag = "9")]
    pub last_offset: i64,
    /// Spans the policies saw.
    #[prost(uint32, tag = "10")]
    pub span_count: u32,
    /// The duration on one clock they saw, in ms, plus one (0: unknown).
    #[prost(uint32, tag = "11")]
    pub one_clock_ms_plus_one: u32,
    /// Attribute predicate bits hit.
    #[prost(uint64, tag = "12")]
    pub attr_hits: u64,
    /// Status and sampled flags (see [`Evidence::flags`]).
    #[prost(uint32, tag = "13")]
    pub flags: u32,
    /// Why a kept trace went out after it had been dropped; empty otherwise.
    #[prost(string, tag = "14")]
    pub promoted: String,
}

impl DecisionRecord {
    /// The trace id, if the record carries a valid one.
    pub fn trace(&self) -> Option<TraceId> {
        let id: [u8; 16] = self.trace_id.as_slice().try_into().ok()?;
        id.iter().any(|&b| b != 0).then_some(TraceId(id))
    }

    /// The record of `trace_id` decided at `decided_unix_nano`, kept by `policy`
    /// (`None`: dropped), from its input `pins` (the first names its partition; a
    /// kept trace's record says how far its spans there are in the output). `None`
    /// without pins.
    pub fn decided(
        trace_id: TraceId,
        policy: Option<&str>,
        pins: &[Pin],
        decided_unix_nano: u64,
    ) -> Option<DecisionRecord> {
        let pin = pins.first()?;
        let output_below_offset = match policy {
            Some(_) => output_reach(pins).map_or(0, |(_, below)| below),
            None => 0,
        };
        let (first_offset, last_offset) = pins
            .iter()
            .filter(|p| p.partition == pin.partition)
            .fold((pin.offset, pin.offset), |(lo, hi), p| {
                (lo.min(p.offset), hi.max(p.offset))
            });
        Some(DecisionRecord {
            trace_id: trace_id.0.to_vec(),
            kept: policy.is_some(),
            policy: policy.unwrap_or_default().to_string(),
            decided_unix_nano,
            input_partition: pin.partition,
            output_below_offset,
            first_offset,
            last_offset,
            ..DecisionRecord::default()
        })
    }

    /// The record of a kept trace decided at `at_ns` (`None` without pins).
    pub fn of_kept(kept: &KeptTrace, at_ns: u64) -> Option<DecisionRecord> {
        let promoted = kept.promoted.as_ref().map(|p| p.reason);
        Some(
            DecisionRecord::decided(kept.trace_id, Some(&kept.policy), &kept.pins, at_ns)?.with(
                kept.pieces.as_ref(),
                &kept.evidence,
                promoted,
            ),
        )
    }

    /// The record of a dropped trace decided at `at_ns` (`None` without pins).
    pub fn of_dropped(dropped: &DroppedTrace, at_ns: u64) -> Option<DecisionRecord> {
        Some(
            DecisionRecord::decided(dropped.trace_id, None, &dropped.pins, at_ns)?.with(
                dropped.pieces.as_ref(),
                &dropped.evidence,
                None,
            ),
        )
    }

    /// Adds where the input lies (when known better than from the pins, in their
    /// partition), what the
    /// policies judged the trace on, and why it was promoted (if it was).
    pub fn with(
        mut self,
        pieces: Option<&Pieces>,
        evidence: &Evidence,
        promoted: Option<&str>,
    ) -> Self {
        // Pieces in another partition than the pins' (a trace split over two, as
        // adding partitions to a keyed topic does) do not move the record: the next
        // owner of the pins' partition must read it, with their output offset.
        if let Some(p) = pieces.filter(|p| p.partition == self.input_partition) {
            self.input_topic = p.topic.to_string();
            self.input_partition = p.partition;
            self.first_offset = p.first;
            self.last_offset = p.last;
        }
        self.span_count = evidence.span_count;
        self.one_clock_ms_plus_one = evidence.one_clock_ms.wrapping_add(1);
        self.attr_hits = evidence.attr_hits;
        self.flags = u32::from(evidence.flags);
        self.promoted = promoted.unwrap_or_default().to_string();
        self
    }

    /// What the policies judged the trace on.
    pub fn evidence(&self) -> Evidence {
        Evidence {
            span_count: self.span_count,
            one_clock_ms: self.one_clock_ms_plus_one.wrapping_sub(1),
            attr_hits: self.attr_hits,
            flags: u8::try_from(self.flags & 0xff).unwrap_or(0),
        }
    }

    /// Where the trace's input lies, if the record says (older records name no
    /// input topic).
    pub fn pieces(&self) -> Option<Pieces> {
        (!self.input_topic.is_empty()).then(|| Pieces {
            topic: Arc::from(self.input_topic.as_str()),
            partition: self.input_partition,
            first: self.first_offset,
            last: self.last_offset.max(self.first_offset),
        })
    }

    /// The decisions partition this record goes to: numbered like its input
    /// partition, modulo the topic's `partitions`; the next owner of that input
    /// partition reads it back from there.
    pub fn partition_for(&self, partitions: i32) -> i32 {
        self.input_partition.rem_euclid(partitions.max(1))
    }

    /// What the record restores in the worker of its trace's shard; `None` for a
    /// record without a valid trace id.
    pub fn restored(&self) -> Option<Restored> {
        Some(Restored {
            trace_id: self.trace()?,
            policy: self.kept.then(|| Arc::from(self.policy.as_str())),
            output_below: (self.kept && self.output_below_offset > 0)
                .then_some((self.input_partition, self.output_below_offset)),
            dropped: if self.kept {
                None
            } else {
                self.pieces().map(|p| (self.evidence(), p))
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    #[test]
    fn wire_format_is_the_proto_files() {
        // Bytes written by hand from decision.proto's field numbers and types.
        let mut wire = vec![0x0a, 16];
        wire.extend_from_slice(&[7u8; 16]);
        wire.extend_from_slice(&[0x10, 1]); // kept = 2, varint
        wire.extend_from_slice(&[0x1a, 6]); // policy = 3, length-delimited
        wire.extend_from_slice(b"errors");
        wire.push(0x21); // decided_unix_nano = 4, fixed64
        wire.extend_from_slice(&42u64.to_le_bytes());
        wire.extend_from_slice(&[0x28, 3]); // input_partition = 5, varint
        wire.extend_from_slice(&[0x30, 0xe8, 0x07]); // output_below_offset = 6: 1000
        let r = DecisionRecord::decode(&wire[..]).expect("decodes");
        assert_eq!((r.input_partition, r.output_below_offset), (3, 1000));
        assert_eq!(r.trace(), Some(TraceId([7; 16])));
        assert!(r.kept);
        assert_eq!(r.policy, "errors");
        assert_eq!(r.decided_unix_nano, 42);
        assert_eq!(r.encode_to_vec(), wire);
        assert_eq!(
            DecisionRecord::default().trace(),
            None,
            "no id is not a trace"
        );
    }

    #[test]
    fn a_decided_record_restores_what_was_decided() {
        let pin = |partition, offset| Pin {
            slot: 0,
            epoch: 1,
            offset,
            partition,
        };
        let pins = [pin(5, 10), pin(5, 12), pin(6, 99)];
        let id = TraceId([9; 16]);
        let kept = DecisionRecord::decided(id, Some("errors"), &pins, 1).expect("pins");
        assert_eq!((kept.input_partition, kept.partition_for(4)), (5, 1));
        // Read back from the wire, it says where the trace's output ends in its
        // first pin's partition (one past its last message there).
        let back = DecisionRecord::decode(&kept.encode_to_vec()[..]).expect("decodes");
        let r = back.restored().expect("a trace");
        assert_eq!(r.trace_id, id);
        assert_eq!(r.policy.as_deref(), Some("errors"));
        assert_eq!(r.output_below, Some((5, 13)));
        assert_eq!((kept.first_offset, kept.last_offset), (10, 12));
        let evidence = Evidence {
            span_count: 3,
            one_clock_ms: u32::MAX,
            attr_hits: 5,
            flags: 4,
        };
        let dropped = DecisionRecord::decided(id, None, &pins, 1)
            .expect("pins")
            .with(
                Pieces::of(&Arc::from("spans"), &pins).as_ref(),
                &evidence,
                None,
            );
        let back = DecisionRecord::decode(&dropped.encode_to_vec()[..]).expect("decodes");
        let r = back.restored().expect("a trace");
        assert_eq!((r.policy, r.output_below), (None, None));
        // A dropped trace's record carries what its late spans are judged with, and
        // where its earlier pieces lie.
        let (e, p) = r.dropped.expect("revisable");
        assert_eq!(e, evidence);
        assert_eq!(
            (&*p.topic, p.partition, p.first, p.last),
            ("spans", 5, 10, 12)
        );
        assert!(DecisionRecord::decided(id, None, &[], 1).is_none());
        assert!(DecisionRecord::default().restored().is_none());
    }

    #[test]
    fn a_records_value_stays_small() {
        // A busy partition's trace: offsets near 10^10, a 10-character topic, a
        // 30 s duration, a few attribute hits.
        let pins = [
            Pin {
                slot: 0,
                epoch: 1,
                offset: 9_876_543_210,
                partition: 63,
            },
            Pin {
                slot: 0,
                epoch: 1,
                offset: 9_876_543_299,
                partition: 63,
            },
        ];
        let evidence = Evidence {
            span_count: 120,
            one_clock_ms: 30_000,
            attr_hits: 0b1011,
            flags: 5,
        };
        let topic: Arc<str> = Arc::from("otlp_spans");
        let id = TraceId([0xab; 16]);
        let dropped = DecisionRecord::decided(id, None, &pins, u64::MAX / 2)
            .expect("pins")
            .with(Pieces::of(&topic, &pins).as_ref(), &evidence, None);
        let kept = DecisionRecord::decided(id, Some("slow-checkouts"), &pins, u64::MAX / 2)
            .expect("pins")
            .with(Pieces::of(&topic, &pins).as_ref(), &evidence, Some("late"));
        let (d, k) = (dropped.encode_to_vec().len(), kept.encode_to_vec().len());
        assert!(d <= 70 && k <= 100, "dropped {d} B, kept {k} B");
    }

    #[test]
    fn a_promotion_over_two_partitions_is_recorded_for_the_late_spans_partition() {
        let late = [Pin {
            slot: 1,
            epoch: 1,
            offset: 5142,
            partition: 1,
        }];
        let earlier = Pieces {
            topic: Arc::from("spans"),
            partition: 3,
            first: 4000,
            last: 4010,
        };
        let r = DecisionRecord::decided(TraceId([4; 16]), Some("errors"), &late, 1)
            .expect("pins")
            .with(Some(&earlier), &Evidence::default(), Some("late"));
        assert_eq!(
            (r.input_partition, r.output_below_offset, r.partition_for(4)),
            (1, 5143, 1),
            "where the late spans' next reader finds it, with their output offset"
        );
    }
}
