//! Source: the Kafka consumer group that feeds the buffer.
mod offsets;
pub use offsets::{OffsetTracker, Pin};
