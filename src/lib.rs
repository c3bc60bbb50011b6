//! tailsift: a tail-sampling stream processor for distributed traces on Kafka.
pub mod codec;
