//! Kafka plumbing shared by the stages that talk to Kafka: the source (the sampler's
//! consumer), the route stage and the sink (the producer).
//!
//! - [`clients`]: the librdkafka settings of tailsift's consumers, producers and
//!   admin clients (bounded queues, idempotence, transactional ids), with the
//!   user's `kafka.consumer` / `kafka.producer` properties applied last;
//! - [`offsets`]: which input offsets are safe to commit (a pending count per
//!   offset, per assignment);
//! - [`headers`]: the record headers tailsift writes, and how a dead letter's are
//!   made.
//!
//! Modelled on Vector's `src/kafka.rs`: one place for what every Kafka-facing
//! component needs, so a fix to it is made once.

pub mod clients;
pub mod headers;
pub mod offsets;

pub use offsets::OffsetTracker;
