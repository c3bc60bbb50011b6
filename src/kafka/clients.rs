//! The librdkafka settings of tailsift's clients.
//!
//! Each builder sets what tailsift relies on, then the user's properties from
//! `kafka.consumer` or `kafka.producer` (which `kafka.client` was merged into at
//! load), so a user can override any tuning but not the safety settings the config
//! refuses to take (`enable.auto.commit`, `group.id`, `transactional.id`, ...).

use rdkafka::config::ClientConfig;

use crate::config::{KafkaConfig, INPUT_FETCH_WAIT_MS};

/// Room for a record's framing on top of `kafka.max_message_bytes`.
pub const RECORD_OVERHEAD_BYTES: usize = 64 * 1024;

/// The settings of an input consumer (the sampler's or the route stage's) in group
/// `group`: offsets committed by tailsift only, from the earliest when none is
/// committed, a prefetch queue of `queue_bytes` and fetch responses of at most
/// `fetch_max_bytes` (each caller's bound: they count toward different budgets),
/// and the assignment strategy the delivery mode needs; then `extra`, then the
/// user's `kafka.consumer`.
pub fn input_consumer(
    kafka: &KafkaConfig,
    group: &str,
    queue_bytes: usize,
    fetch_max_bytes: usize,
    extra: &[(&str, &str)],
) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &kafka.brokers)
        .set("group.id", group)
        // Offsets are committed by tailsift only, and only below undecided spans.
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        // librdkafka's prefetch queue and fetch responses are bounded.
        .set(
            "queued.max.messages.kbytes",
            (queue_bytes / 1024).max(1).to_string(),
        )
        .set("fetch.max.bytes", fetch_max_bytes.to_string())
        // When that queue is full librdkafka postpones the partition's next fetch
        // by this much (default 1 s): at full speed the queue empties in well under
        // that, and the default left the consumer idle most of the time.
        .set("fetch.queue.backoff.ms", "10")
        // A fetch held open on partitions at their end holds up the rest.
        .set("fetch.wait.max.ms", INPUT_FETCH_WAIT_MS);
    // The new group protocol (KIP-848, `group.protocol: consumer`) assigns on the
    // broker, incrementally; the classic one takes a client-side strategy.
    // Exactly-once with the classic protocol rebalances eagerly, so every member
    // commits its transaction on revoke, under its generation, and owns nothing
    // while the group rebalances (no commit can then carry a stale generation).
    if kafka
        .consumer
        .get("group.protocol")
        .is_none_or(|p| p != "consumer")
    {
        c.set(
            "partition.assignment.strategy",
            if kafka.exactly_once {
                "range,roundrobin"
            } else {
                "cooperative-sticky"
            },
        );
    }
    if kafka.exactly_once {
        c.set("isolation.level", "read_committed");
    }
    for (k, v) in extra {
        c.set(*k, *v);
    }
    for (k, v) in &kafka.consumer {
        c.set(k, v);
    }
    c
}

/// What differs between tailsift's producers (the sink's and the route stage's).
#[derive(Debug, Clone, Copy)]
pub struct ProducerLimits<'a> {
    /// The largest record librdkafka may send (`message.max.bytes`).
    pub max_record_bytes: usize,
    /// librdkafka's queue, in KiB: it must admit the largest record.
    pub queue_kbytes: usize,
    /// When librdkafka gives up on a delivery (`message.timeout.ms`; `0`: never),
    /// outside transactions.
    pub message_timeout_ms: &'a str,
    /// Exactly-once: the group whose transactional ids this producer takes.
    pub transactional_group: Option<&'a str>,
}

/// The settings of a producer: idempotent, compressed as configured, with the
/// given limits, transactional when asked (then deliveries give up within the
/// transaction timeout, 10 s unless `kafka.producer` sets one); then `extra`, then
/// the user's `kafka.producer`.
pub fn producer(
    kafka: &KafkaConfig,
    limits: ProducerLimits<'_>,
    extra: &[(&str, &str)],
) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &kafka.brokers)
        .set("enable.idempotence", "true")
        .set("compression.codec", kafka.compression.to_librdkafka())
        .set("linger.ms", "5")
        .set("message.max.bytes", limits.max_record_bytes.to_string())
        .set("message.timeout.ms", limits.message_timeout_ms)
        .set(
            "queue.buffering.max.kbytes",
            limits.queue_kbytes.to_string(),
        );
    if let Some(group) = limits.transactional_group {
        // Within the decisions reader's patience (60 s): a frozen instance's open
        // transaction holds back the next owner only this long.
        let timeout = kafka
            .producer
            .get("transaction.timeout.ms")
            .map_or("10000", String::as_str);
        c.set("transactional.id", transactional_id(group))
            .set("transaction.timeout.ms", timeout)
            // librdkafka requires deliveries to give up within a transaction.
            .set("message.timeout.ms", timeout);
    }
    for (k, v) in extra {
        c.set(*k, *v);
    }
    for (k, v) in &kafka.producer {
        c.set(k, v);
    }
    c
}

/// The settings of an admin client (topic creation and checks): the producer's
/// properties (TLS, SASL, ...).
pub fn admin(kafka: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &kafka.brokers);
    for (k, v) in &kafka.producer {
        c.set(k, v);
    }
    c
}

/// A `transactional.id` of this process's own: the group id, the host name and a
/// random part. With KIP-447 fencing comes from the group generation, so instances
/// need not share ids; a restart gets a new one.
pub fn transactional_id(group: &str) -> String {
    use std::hash::{BuildHasher, Hasher};
    let host = std::env::var("HOSTNAME").unwrap_or_default();
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    format!("{group}.{host}.{:016x}", h.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn kafka(extra: &str) -> KafkaConfig {
        Config::from_yaml(&format!(
            "kafka: {{brokers: 'b:9092', input_topics: [i], output_topic: o{extra}}}\npolicies:\n  - {{name: all, type: always_sample}}\n"
        ))
        .expect("valid")
        .kafka
    }

    #[test]
    fn the_users_properties_come_last_and_the_mode_picks_the_strategy() {
        let k = kafka(", consumer: {fetch.wait.max.ms: '7'}");
        let c = input_consumer(
            &k,
            "g",
            4 << 20,
            4 << 20,
            &[("statistics.interval.ms", "1000")],
        );
        assert_eq!(c.get("fetch.wait.max.ms"), Some("7"));
        assert_eq!(c.get("statistics.interval.ms"), Some("1000"));
        assert_eq!(
            c.get("partition.assignment.strategy"),
            Some("cooperative-sticky")
        );
        assert_eq!(c.get("queued.max.messages.kbytes"), Some("4096"));
        assert_eq!(c.get("fetch.max.bytes"), Some("4194304"));
        let eo = kafka(", decisions_topic: d, exactly_once: true");
        let c = input_consumer(&eo, "g", 1 << 20, 1 << 20, &[]);
        assert_eq!(
            c.get("partition.assignment.strategy"),
            Some("range,roundrobin")
        );
        assert_eq!(c.get("isolation.level"), Some("read_committed"));
        let limits = ProducerLimits {
            max_record_bytes: 2 << 20,
            queue_kbytes: 1024,
            message_timeout_ms: "0",
            transactional_group: Some("g"),
        };
        let p = producer(&eo, limits, &[]);
        assert!(p
            .get("transactional.id")
            .is_some_and(|id| id.starts_with("g.")));
        assert_eq!(
            p.get("message.timeout.ms"),
            Some("10000"),
            "within the transaction"
        );
    }
}
