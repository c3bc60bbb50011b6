//! The decisions topic's record: `proto/tailsift/v1/decision.proto`.

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
}

impl DecisionRecord {
    /// The trace id, if the record carries a valid one.
    pub fn trace(&self) -> Option<TraceId> {
        let id: [u8; 16] = self.trace_id.as_slice().try_into().ok()?;
        id.iter().any(|&b| b != 0).then_some(TraceId(id))
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
}
