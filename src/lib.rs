//! tailsift: a tail-sampling stream processor for distributed traces on Kafka.
//!
//! # Layout
//!
//! The modules follow a span through the process:
//!
//! * [`route`] (only for input not keyed by trace id): splits each message by trace
//!   and writes the pieces keyed by trace id to a topic the source reads instead.
//! * [`source`]: Kafka consumer group; reads messages, tracks and commits offsets;
//!   its scanner tasks run the codec in parallel and deal spans to the shards.
//! * [`codec`]: scans OTLP protobuf without building objects; re-encodes kept traces.
//! * [`buffer`]: sharded store of spans grouped by trace id, with due queues in
//!   each input partition's stream time ([`clock`]).
//! * [`decide`]: the worker owning each shard; runs the [`policy`] set on due traces.
//! * [`sink`]: Kafka producer for kept traces, dead letters and decisions;
//!   acknowledges pins.
//!
//! What travels between them (pins, the messages each stage receives, the decision
//! record, the trace summary) is in [`flow`], the memory budget they charge in
//! [`budget`]. [`app`] wires them with bounded channels; [`config`] is the YAML schema, [`check`] what `tailsift check` prints;
//! [`telemetry`] the metrics and health endpoints; [`ottl`] the subset of OTTL
//! that `ottl_condition` policies are written in, evaluated by the scanner; [`gen`] and [`demo`] the synthetic
//! traffic and the zero-setup demo on the embedded broker; [`simulate`] runs a policy
//! set over recorded OTLP offline; [`reload`] replaces the policy set while running;
//! [`plan`] sizes a deployment from the benches' figures.

#![warn(missing_docs)]

pub mod app;
pub mod budget;
pub mod buffer;
pub mod check;
pub mod clock;
pub mod codec;
pub mod config;
pub mod decide;
pub mod decode;
pub mod demo;
pub mod duration;
pub mod flow;
pub mod gen;
pub mod inspect;
pub mod kafka;
pub mod ottl;
pub mod plan;
pub mod policy;
pub mod reload;
pub mod route;
pub mod shutdown;
pub mod simulate;
pub mod sink;
pub mod source;
pub mod telemetry;
