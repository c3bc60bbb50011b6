//! Every metric name tailsift exports, in one place. Units are in the names.

/// Input messages read (counter).
pub const MESSAGES_RECEIVED: &str = "tailsift_messages_received_total";
/// Input bytes read (counter).
pub const BYTES_RECEIVED: &str = "tailsift_received_bytes_total";
/// Spans read from valid input messages (counter).
pub const SPANS_RECEIVED: &str = "tailsift_spans_received_total";
/// Input messages sent to the dead-letter topic, label `reason` (counter).
pub const MESSAGES_DEAD_LETTERED: &str = "tailsift_messages_dead_lettered_total";
/// Spans sent to the dead-letter topic apart from their message or trace, because
/// grouping or standard OTLP decoders could not use them, label `reason` (counter).
pub const SPANS_REJECTED: &str = "tailsift_spans_rejected_total";
/// Traces decided, labels `policy` (first policy that sampled, or `none`) and
/// `decision` (`sampled` / `not_sampled`) (counter).
pub const TRACES_DECIDED: &str = "tailsift_traces_decided_total";
/// Policy votes, labels `policy` and `decision` (counter).
pub const POLICY_EVALUATIONS: &str = "tailsift_policy_evaluations_total";
/// Spans that arrived after their trace was decided, label `decision` (counter).
pub const LATE_SPANS: &str = "tailsift_late_spans_total";
/// Time from a trace's first span to its decision (histogram, seconds).
pub const DECISION_LATENCY: &str = "tailsift_decision_latency_seconds";
/// Traces in the buffer (gauge).
pub const BUFFER_TRACES: &str = "tailsift_buffer_traces";
/// Spans in the buffer (gauge).
pub const BUFFER_SPANS: &str = "tailsift_buffer_spans";
/// Bytes charged for the buffer: encoded spans plus book-keeping (gauge).
pub const BUFFER_BYTES: &str = "tailsift_buffer_bytes";
/// Kept-trace records produced and acknowledged (counter).
pub const RECORDS_PRODUCED: &str = "tailsift_records_produced_total";
/// Spans produced and acknowledged (counter).
pub const SPANS_PRODUCED: &str = "tailsift_spans_produced_total";
/// Bytes produced and acknowledged (counter).
pub const BYTES_PRODUCED: &str = "tailsift_produced_bytes_total";
/// Failed produce attempts (retried), label `error` (counter).
pub const PRODUCE_ERRORS: &str = "tailsift_produce_errors_total";
/// 1 while the oldest delivery (kept trace, dead letter or decision) has waited for
/// its acknowledgement longer than 10 s, else 0 (gauge); `/readyz` answers 503 then.
pub const PRODUCE_STALLED: &str = "tailsift_produce_stalled";
/// Age of the oldest delivery awaiting acknowledgement (gauge, seconds; 0 when none).
pub const PRODUCE_OLDEST_PENDING: &str = "tailsift_produce_oldest_pending_seconds";
/// Offset commits, label `result` (`ok` / `error`) (counter).
pub const COMMITS: &str = "tailsift_offset_commits_total";
/// Decisions written to the decisions topic, label `decision` (counter).
pub const DECISIONS_RECORDED: &str = "tailsift_decisions_recorded_total";
/// Decisions read back from the decisions topic on assignment (counter).
pub const DECISIONS_LOADED: &str = "tailsift_decisions_loaded_total";
/// Input messages still pinned by undecided or unacknowledged traces (gauge).
pub const PINNED_MESSAGES: &str = "tailsift_pinned_messages";
/// Messages not yet read, summed over assigned partitions, label `topic` (gauge).
/// Messages read but not yet committed are `tailsift_pinned_messages`.
pub const CONSUMER_LAG: &str = "tailsift_consumer_lag_messages";
/// Wall clock minus stream time per input partition, labels `topic` and `partition`
/// (gauge, seconds): how far behind its input's own clock decisions are running.
pub const STREAM_TIME_LAG: &str = "tailsift_stream_time_lag_seconds";
/// Input records whose timestamp was too far ahead of the wall clock to move stream
/// time (counter).
pub const FUTURE_TIMESTAMPS: &str = "tailsift_future_timestamps_total";
/// 1 when at least one broker connection is up, else 0 (gauge).
pub const KAFKA_UP: &str = "tailsift_kafka_up";
/// Partitions assigned to this instance (gauge).
pub const ASSIGNED_PARTITIONS: &str = "tailsift_assigned_partitions";
/// Decisions made before the trace's wait was over, label `reason` (`memory`,
/// `trace_limit`) (counter).
pub const FORCED_DECISIONS: &str = "tailsift_forced_decisions_total";
/// Decisions remembered for late spans (gauge).
pub const DECISION_CACHE_ENTRIES: &str = "tailsift_decision_cache_entries";
/// Bytes charged to the memory budget: input held, book-keeping, kept traces awaiting
/// acknowledgement, decision cache (gauge).
pub const MEMORY_USED: &str = "tailsift_memory_used_bytes";
/// The buffer's share of `memory.limit` (gauge).
pub const MEMORY_BUDGET: &str = "tailsift_memory_budget_bytes";
/// 1 while memory pressure is on (input paused, oldest traces decided early) (gauge).
pub const MEMORY_PRESSURE: &str = "tailsift_memory_pressure";
/// Input partitions paused by memory pressure (gauge).
pub const PAUSED_PARTITIONS: &str = "tailsift_paused_partitions";
/// Configuration reloads, label `result` (`ok` / `error`) (counter).
pub const CONFIG_RELOADS: &str = "tailsift_config_reloads_total";
/// The policy set in force: 0 at start, +1 per successful reload (gauge).
pub const POLICY_GENERATION: &str = "tailsift_policy_generation";
