//! Every metric name tailsift exports, in one place, with its kind and its `# HELP`
//! text (the doc comment, which is where a reader of the code looks too). Units are
//! in the names.

/// What kind of metric a name is, for its `# HELP` registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only grows.
    Counter,
    /// Goes up and down.
    Gauge,
    /// A distribution in buckets.
    Histogram,
}

/// One exported metric: its name, kind and help text.
#[derive(Debug, Clone, Copy)]
pub struct Metric {
    /// The Prometheus name.
    pub name: &'static str,
    /// Counter, gauge or histogram.
    pub kind: Kind,
    /// The doc comment's lines.
    help: &'static str,
}

impl Metric {
    /// The help text on one line.
    pub fn help(&self) -> String {
        self.help.split_whitespace().collect::<Vec<_>>().join(" ")
    }
}

/// Declares each name as a constant documented by its help text, and [`ALL`].
macro_rules! metric_names {
    ($( $(#[doc = $doc:literal])+ $kind:ident $name:ident = $value:literal; )+) => {
        $( $(#[doc = $doc])+ pub const $name: &str = $value; )+
        /// Every metric tailsift exports.
        pub const ALL: &[Metric] = &[
            $( Metric { name: $value, kind: Kind::$kind, help: concat!($($doc, " "),+) } ),+
        ];
    };
}

metric_names! {
    /// Input messages read (counter).
    Counter MESSAGES_RECEIVED = "tailsift_messages_received_total";
    /// Input bytes read (counter).
    Counter BYTES_RECEIVED = "tailsift_received_bytes_total";
    /// Spans read from valid input messages (counter).
    Counter SPANS_RECEIVED = "tailsift_spans_received_total";
    /// Input messages sent to the dead-letter topic, label `reason` (counter).
    Counter MESSAGES_DEAD_LETTERED = "tailsift_messages_dead_lettered_total";
    /// Spans sent to the dead-letter topic apart from their message or trace, because
    /// grouping or standard OTLP decoders could not use them, label `reason` (counter).
    Counter SPANS_REJECTED = "tailsift_spans_rejected_total";
    /// Input messages not keyed by their trace: label `topic` and `reason`
    /// (`missing` key, key `not_trace_id`, or spans of `other_traces` than the key
    /// names). With more than one instance such input splits traces (counter).
    Counter INPUT_UNKEYED = "tailsift_input_unkeyed_messages_total";
    /// Messages the route stage read from an unkeyed input topic, label `topic`
    /// (counter).
    Counter ROUTE_MESSAGES = "tailsift_route_messages_total";
    /// Records the route stage wrote keyed by trace id to a routed topic, one per
    /// trace of a message (more for a trace over `kafka.max_message_bytes`), label
    /// `topic` (counter).
    Counter ROUTE_RECORDS = "tailsift_route_records_total";
    /// Messages (or their spans without a trace id) the route stage sent to the
    /// dead-letter topic, label `reason` (counter).
    Counter ROUTE_DEAD_LETTERED = "tailsift_route_dead_lettered_total";
    /// Route stage input offset commits, label `result` (`ok` / `error`) (counter).
    Counter ROUTE_COMMITS = "tailsift_route_commits_total";
    /// Traces decided, labels `policy` (first policy that sampled, or `none`) and
    /// `decision` (`sampled` / `not_sampled`) (counter).
    Counter TRACES_DECIDED = "tailsift_traces_decided_total";
    /// Policy votes, labels `policy` and `decision` (counter).
    Counter POLICY_EVALUATIONS = "tailsift_policy_evaluations_total";
    /// Spans that arrived after their trace was decided, label `decision` (counter).
    Counter LATE_SPANS = "tailsift_late_spans_total";
    /// Dropped traces that late spans made a settled policy keep, sent out whole
    /// with their earlier pieces read again from the input: label `reason` (`late`)
    /// (counter).
    Counter PROMOTIONS = "tailsift_promotions_total";
    /// Promoted traces that went out without some earlier piece: label `reason`
    /// (`retention`: deleted from the input; `too_large`: the range exceeds
    /// `promotion.max_range_bytes`; `unreadable`: the broker did not serve it in time)
    /// (counter).
    Counter PROMOTIONS_INCOMPLETE = "tailsift_promotions_incomplete_total";
    /// Input bytes read again to promote dropped traces (counter).
    Counter PROMOTION_REREAD_BYTES = "tailsift_promotion_reread_bytes_total";
    /// Time from a trace's first span to its decision (histogram, seconds).
    Histogram DECISION_LATENCY = "tailsift_decision_latency_seconds";
    /// Traces in the buffer (gauge).
    Gauge BUFFER_TRACES = "tailsift_buffer_traces";
    /// Spans in the buffer (gauge).
    Gauge BUFFER_SPANS = "tailsift_buffer_spans";
    /// Bytes charged for the buffer: encoded spans plus book-keeping (gauge).
    Gauge BUFFER_BYTES = "tailsift_buffer_bytes";
    /// Kept-trace records produced and acknowledged (counter).
    Counter RECORDS_PRODUCED = "tailsift_records_produced_total";
    /// Spans produced and acknowledged (counter).
    Counter SPANS_PRODUCED = "tailsift_spans_produced_total";
    /// Bytes produced and acknowledged (counter).
    Counter BYTES_PRODUCED = "tailsift_produced_bytes_total";
    /// Failed produce attempts (retried), label `error` (counter).
    Counter PRODUCE_ERRORS = "tailsift_produce_errors_total";
    /// 1 while the oldest delivery (kept trace, dead letter or decision) has waited for
    /// its acknowledgement longer than 10 s, else 0 (gauge); `/readyz` answers 503 then.
    Gauge PRODUCE_STALLED = "tailsift_produce_stalled";
    /// Age of the oldest delivery awaiting acknowledgement (gauge, seconds; 0 when none).
    Gauge PRODUCE_OLDEST_PENDING = "tailsift_produce_oldest_pending_seconds";
    /// Offset commits, label `result` (`ok` / `error`) (counter).
    Counter COMMITS = "tailsift_offset_commits_total";
    /// Decisions written to the decisions topic, label `decision` (counter).
    Counter DECISIONS_RECORDED = "tailsift_decisions_recorded_total";
    /// Decisions read back from the decisions topic on assignment (counter).
    Counter DECISIONS_LOADED = "tailsift_decisions_loaded_total";
    /// Input messages still pinned by undecided or unacknowledged traces (gauge).
    Gauge PINNED_MESSAGES = "tailsift_pinned_messages";
    /// Messages not yet read, summed over assigned partitions, label `topic` (gauge).
    /// Messages read but not yet committed are `tailsift_pinned_messages`.
    Gauge CONSUMER_LAG = "tailsift_consumer_lag_messages";
    /// Wall clock minus stream time per input partition, labels `topic` and `partition`
    /// (gauge, seconds): how far behind its input's own clock decisions are running.
    Gauge STREAM_TIME_LAG = "tailsift_stream_time_lag_seconds";
    /// Input records stamped ahead of the wall clock (more than 1 s): they move stream
    /// time only up to the wall clock, or not at all past the allowed skew (counter).
    Counter FUTURE_TIMESTAMPS = "tailsift_future_timestamps_total";
    /// Idle probes that found an input partition in an outage of its own while the
    /// cluster was up, label `reason` (`offline`: no leader; `leader_or_isr_changed`;
    /// `replica_unreachable`: a broker among its leader and in-sync replicas lost):
    /// its stream time stood still and its next idle streak is the longer one
    /// (counter).
    Counter PARTITION_OUTAGES = "tailsift_partition_outages_total";
    /// Input partitions holding undecided input whose stream time and lowest pinned
    /// offset have not moved for several decision waits, though tailsift does not
    /// hold them on purpose; `/readyz` names them (gauge).
    Gauge STALLED_PARTITIONS = "tailsift_stalled_partitions";
    /// Episodes of an input partition stalled as `tailsift_stalled_partitions` counts
    /// (counter).
    Counter PARTITION_STALLS = "tailsift_partition_stalls_total";
    /// 1 when at least one broker connection is up, else 0 (gauge).
    Gauge KAFKA_UP = "tailsift_kafka_up";
    /// Partitions assigned to this instance (gauge).
    Gauge ASSIGNED_PARTITIONS = "tailsift_assigned_partitions";
    /// Decisions made before the trace's wait was over, label `reason` (`memory`,
    /// `trace_limit`) (counter).
    Counter FORCED_DECISIONS = "tailsift_forced_decisions_total";
    /// Decisions remembered for late spans (gauge).
    Gauge DECISION_CACHE_ENTRIES = "tailsift_decision_cache_entries";
    /// Bytes charged to the memory budget: input held, book-keeping, kept traces awaiting
    /// acknowledgement, decision cache (gauge).
    Gauge MEMORY_USED = "tailsift_memory_used_bytes";
    /// The buffer's share of `memory.limit` (gauge).
    Gauge MEMORY_BUDGET = "tailsift_memory_budget_bytes";
    /// 1 while memory pressure is on (input paused, oldest traces decided early) (gauge).
    Gauge MEMORY_PRESSURE = "tailsift_memory_pressure";
    /// Input partitions paused by memory pressure (gauge).
    Gauge PAUSED_PARTITIONS = "tailsift_paused_partitions";
    /// Configuration reloads, label `result` (`ok` / `error`) (counter).
    Counter CONFIG_RELOADS = "tailsift_config_reloads_total";
    /// The policy set in force: 0 at start, +1 per successful reload (gauge).
    Gauge POLICY_GENERATION = "tailsift_policy_generation";
    /// Settings the config file changed since start that only a restart applies
    /// (brokers, group, topics, buffer, memory, listen address, ...), each named in a
    /// warning at the reload; 0 after a restart (gauge).
    Gauge CONFIG_RESTART_PENDING = "tailsift_config_restart_pending";
    /// 1 for the policy set in force, label `fingerprint` (a hash of the policies and
    /// `sample_on_first_match`; 0 for a set a reload replaced): instances of one
    /// group with different fingerprints decide by different rules (gauge).
    Gauge POLICY_FINGERPRINT = "tailsift_policy_fingerprint";
    /// Always 1, labels `version` and `commit`: which build is running (gauge).
    Gauge BUILD_INFO = "tailsift_build_info";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_prometheus_names_with_help() {
        let mut seen = std::collections::HashSet::new();
        for m in ALL {
            assert!(seen.insert(m.name), "{} twice", m.name);
            assert!(m.name.starts_with("tailsift_"), "{}", m.name);
            assert!(
                m.name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
                "{}",
                m.name
            );
            assert_eq!(
                m.kind == Kind::Counter,
                m.name.ends_with("_total"),
                "{}",
                m.name
            );
            assert!(
                !m.help().is_empty() && !m.help().contains('\n'),
                "{}",
                m.name
            );
        }
    }
}
