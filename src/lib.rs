//! tailsift: a tail-sampling stream processor for distributed traces on Kafka.
pub mod codec;
pub mod config;
pub mod policy;
pub mod buffer;
pub mod source;
