//! The record headers tailsift writes: on kept traces, on dead letters (from the
//! sink and from the route stage) and on routed records.

/// Header on kept-trace records naming the policy that kept the trace.
pub const HEADER_POLICY: &str = "tailsift.policy";
/// Header on kept-trace records decided early, with the reason (`memory`,
/// `trace_limit`); absent when the trace got its full wait.
pub const HEADER_FORCED: &str = "tailsift.forced";
/// Header on kept-trace records of a trace that had been dropped and was promoted,
/// with the reason (`late`: late spans made a policy keep it); absent otherwise.
pub const HEADER_PROMOTED: &str = "tailsift.promoted";
/// Header on promoted kept-trace records some of whose earlier spans could not be
/// read again (deleted by retention, say): what is missing and why.
pub const HEADER_INCOMPLETE: &str = "tailsift.incomplete";
/// Header on dead letters: why the message was refused.
pub const HEADER_ERROR: &str = "tailsift.error";
/// Header on dead letters: the input topic.
pub const HEADER_SOURCE_TOPIC: &str = "tailsift.source.topic";
/// Header on dead letters: the input partition (of a refused kept trace: the
/// partition of its first input message).
pub const HEADER_SOURCE_PARTITION: &str = "tailsift.source.partition";
/// Header on dead letters: the input offset (of a refused kept trace: its first
/// input message's, keyed by its trace id like the dead letter).
pub const HEADER_SOURCE_OFFSET: &str = "tailsift.source.offset";
/// Header on a dead letter whose payload the broker refused as too large: the
/// payload's size in bytes. The record then carries no payload; the original stays
/// at the source coordinates in the headers.
pub const HEADER_PAYLOAD_OMITTED: &str = "tailsift.payload.omitted";

use rdkafka::message::{Header, OwnedHeaders};

/// One header with a text value.
pub(crate) fn header<'a>(key: &'a str, value: &'a str) -> Header<'a, &'a [u8]> {
    Header {
        key,
        value: Some(value.as_bytes()),
    }
}

/// A dead letter's headers: the input message's own (`own`), then why it was
/// refused and where it came from. The sink and the route stage both write these.
pub(crate) fn dead_letter_headers(
    own: OwnedHeaders,
    reason: &str,
    topic: &str,
    partition: i32,
    offset: i64,
) -> OwnedHeaders {
    own.insert(header(HEADER_ERROR, reason))
        .insert(header(HEADER_SOURCE_TOPIC, topic))
        .insert(header(HEADER_SOURCE_PARTITION, &partition.to_string()))
        .insert(header(HEADER_SOURCE_OFFSET, &offset.to_string()))
}
