//! `tailsift plan`: capacity planning from the figures the benches measure.
//!
//! A trace stays in the buffer for about `decision_wait` after its first span, so an
//! instance holds `spans/s x decision_wait` spans and `traces/s x decision_wait`
//! traces of its share of the input. Each costs what `benches/memory.rs` measures
//! (the span's encoded size plus [`SPAN_OVERHEAD_BYTES`], [`TRACE_BYTES`] per trace);
//! `memory.limit` is then sized so that this sits below `low_watermark` of the
//! buffer's share (so nothing is decided early for memory in steady state), and the
//! pod's memory is that limit plus [`PROCESS_OVERHEAD_BYTES`] (`benches/flood.rs`).
//! Instances follow from the CPU one span costs ([`CPU_NS_PER_SPAN`],
//! `benches/peers.rs`) at [`TARGET_CPU_SHARE`] of the cores, and from the memory one
//! instance may have, if given. A plan is a starting point: re-measure with your own
//! spans (`bytes_per_span` and spans per trace matter most) and watch
//! `tailsift_memory_used_bytes` and `tailsift_forced_decisions_total`.

use std::fmt;
use std::time::Duration;

use crate::config::{MemoryConfig, MemorySplit};

/// Bytes of book-keeping per buffered span beyond its encoded size (`cargo bench
/// --bench memory`: "per buffered span: encoded size + 20 B" on 2026-12-07).
pub const SPAN_OVERHEAD_BYTES: f64 = 20.0;
/// Bytes per live trace (`cargo bench --bench memory`: "per live trace: 126 B" on 2026-12-07).
pub const TRACE_BYTES: f64 = 126.0;
/// Bytes per decision-cache entry, an upper bound of the cache's allocation per entry
/// (`decide/cache.rs` counts the same allocations): ~36 B for the verdict and its
/// place in the eviction order, ~83 B more for a dropped trace's evidence and input
/// range (promotion), with the maps' growth slack.
pub const CACHE_ENTRY_BYTES: f64 = 160.0;
/// Process memory beyond `memory.limit`: binary, runtime, librdkafka threads and
/// sockets, allocator slack (`cargo bench --bench flood`: up to 40 MiB seen; 48 MiB
/// planned, as the README says).
pub const PROCESS_OVERHEAD_BYTES: u64 = 48 << 20;
/// CPU per span, all of the process's threads, release build, Collector-sized input
/// (`cargo bench --bench peers`: 0.99-1.10 us of CPU per span on 2026-12-07, at
/// 0c05d1d; 2.56 us before the input was kept in librdkafka's memory and the fetch
/// stall fixed); rounded up.
pub const CPU_NS_PER_SPAN: f64 = 1100.0;
/// Share of an instance's cores a plan fills, leaving room for bursts and catch-up
/// after an outage (a consumer at 100% never catches up).
pub const TARGET_CPU_SHARE: f64 = 0.7;
/// Bytes per record written to the decisions topic (key, a value of at most 80
/// bytes with a 10-character input topic, see `flow::record`'s size test, headers
/// and batch overhead).
pub const DECISION_RECORD_BYTES: f64 = 128.0;

/// What `tailsift plan` is asked.
#[derive(Debug, Clone)]
pub struct PlanInput {
    /// Spans per second across the whole input.
    pub spans_per_sec: f64,
    /// `buffer.decision_wait`.
    pub decision_wait: Duration,
    /// Encoded OTLP bytes per span (the input topic's bytes / spans).
    pub bytes_per_span: f64,
    /// Spans per trace, on average.
    pub spans_per_trace: f64,
    /// Share of the input that is kept (the policies' sampling rate plus errors and
    /// slow traces).
    pub kept_share: f64,
    /// Cores one instance may use.
    pub cores_per_instance: f64,
    /// Memory one instance may use (the pod's limit), if bounded.
    pub memory_per_instance: Option<u64>,
    /// `buffer.decision_cache_traces`.
    pub decision_cache_traces: u64,
    /// `memory.low_watermark`.
    pub low_watermark: f64,
}

impl Default for PlanInput {
    fn default() -> Self {
        PlanInput {
            spans_per_sec: 0.0,
            decision_wait: Duration::from_secs(30),
            bytes_per_span: 450.0,
            spans_per_trace: 20.0,
            kept_share: 0.1,
            cores_per_instance: 2.0,
            memory_per_instance: None,
            decision_cache_traces: 100_000,
            low_watermark: MemoryConfig::default().low_watermark,
        }
    }
}

/// A figure `tailsift plan` cannot work with.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// A value out of its range.
    #[error("{field}: {value} is not valid: expected {expected}")]
    Invalid {
        /// The option.
        field: &'static str,
        /// What was given.
        value: String,
        /// What is accepted.
        expected: &'static str,
    },
}

/// The plan: what to run and what it costs.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Instances (consumer group members).
    pub instances: u64,
    /// Input partitions: at least twice the instances, so the group can double
    /// without repartitioning keyed input.
    pub partitions: u64,
    /// Spans one instance buffers in steady state.
    pub spans_buffered: f64,
    /// Traces one instance buffers in steady state.
    pub traces_buffered: f64,
    /// Bytes one instance's buffer holds in steady state (spans and traces; what
    /// `tailsift_buffer_bytes` shows).
    pub buffer_bytes: f64,
    /// Bytes the budget holds besides: the decision cache.
    pub cache_bytes: f64,
    /// `memory.limit` to set on each instance.
    pub memory_limit: u64,
    /// How that limit is split (librdkafka's queues and the buffer).
    pub split: MemorySplit,
    /// The pod's memory: `memory_limit` plus the process overhead.
    pub pod_memory: u64,
    /// Cores one instance uses at the planned rate.
    pub cores_used: f64,
    /// Input bytes per second, all instances.
    pub network_in: f64,
    /// Output bytes per second, all instances (kept traces).
    pub network_out: f64,
    /// Decisions-topic bytes per second, all instances, when one is configured.
    pub decisions_out: f64,
}

fn check(field: &'static str, v: f64, ok: bool, expected: &'static str) -> Result<(), PlanError> {
    if ok && v.is_finite() {
        Ok(())
    } else {
        Err(PlanError::Invalid {
            field,
            value: v.to_string(),
            expected,
        })
    }
}

/// The largest `memory.limit` a plan names, in MiB (1 PiB): beyond it the input
/// is refused rather than the search overflowing.
const MAX_LIMIT_MIB: u64 = 1 << 30;

/// The smallest `memory.limit` (whole MiB) whose buffer share holds `bytes` below
/// `low` of it; `None` if none up to [`MAX_LIMIT_MIB`] does.
fn limit_for(bytes: f64, low: f64) -> Option<(u64, MemorySplit)> {
    let config = |mib: u64| MemoryConfig {
        limit: crate::config::ByteSize(mib << 20),
        ..MemoryConfig::default()
    };
    let fits = |mib: u64| config(mib).split().buffer as f64 * low >= bytes;
    if !fits(MAX_LIMIT_MIB) {
        return None;
    }
    let (mut lo, mut hi) = (16u64, 16u64);
    while !fits(hi) {
        lo = hi;
        hi *= 2;
    }
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if fits(mid) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    Some((hi << 20, config(hi).split()))
}

/// Works out the plan for `input`.
pub fn plan(input: &PlanInput) -> Result<Plan, PlanError> {
    check(
        "--spans-per-sec",
        input.spans_per_sec,
        input.spans_per_sec > 0.0,
        "a rate above 0",
    )?;
    check(
        "--bytes-per-span",
        input.bytes_per_span,
        input.bytes_per_span >= 1.0,
        "at least 1 byte",
    )?;
    check(
        "--spans-per-trace",
        input.spans_per_trace,
        input.spans_per_trace >= 1.0,
        "at least 1",
    )?;
    check(
        "--kept-share",
        input.kept_share,
        (0.0..=1.0).contains(&input.kept_share),
        "a share from 0 to 1",
    )?;
    check(
        "--cores",
        input.cores_per_instance,
        input.cores_per_instance > 0.0,
        "a number of cores above 0",
    )?;
    let wait = input.decision_wait.as_secs_f64();
    check("--decision-wait", wait, wait > 0.0, "a duration above 0")?;
    let traces_per_sec = input.spans_per_sec / input.spans_per_trace;
    let all_spans = input.spans_per_sec * wait;
    let all_traces = traces_per_sec * wait;
    let all_buffer =
        all_spans * (input.bytes_per_span + SPAN_OVERHEAD_BYTES) + all_traces * TRACE_BYTES;
    let cache_bytes = input.decision_cache_traces as f64 * CACHE_ENTRY_BYTES;

    let cpu = input.spans_per_sec * CPU_NS_PER_SPAN / 1e9;
    let mut instances = (cpu / (input.cores_per_instance * TARGET_CPU_SHARE))
        .ceil()
        .max(1.0) as u64;
    if let Some(pod) = input.memory_per_instance {
        // Grow the group until each member's share fits the pod.
        loop {
            let fits = limit_for(
                all_buffer / instances as f64 + cache_bytes,
                input.low_watermark,
            )
            .is_some_and(|(limit, _)| limit + PROCESS_OVERHEAD_BYTES <= pod);
            if fits {
                break;
            }
            if instances >= 10_000 {
                return Err(PlanError::Invalid {
                    field: "--memory-per-instance",
                    value: pod.to_string(),
                    expected: "room for more than the process overhead and the decision cache",
                });
            }
            instances += 1;
        }
    }
    let n = instances as f64;
    let buffer_bytes = all_buffer / n;
    let (memory_limit, split) = limit_for(buffer_bytes + cache_bytes, input.low_watermark)
        .ok_or_else(|| PlanError::Invalid {
            field: "--spans-per-sec",
            value: input.spans_per_sec.to_string(),
            expected: "a rate whose buffer fits one instance's memory.limit of at most 1 PiB",
        })?;
    let network_in = input.spans_per_sec * input.bytes_per_span;
    Ok(Plan {
        instances,
        partitions: instances * 2,
        spans_buffered: all_spans / n,
        traces_buffered: all_traces / n,
        buffer_bytes,
        cache_bytes,
        memory_limit,
        split,
        pod_memory: memory_limit + PROCESS_OVERHEAD_BYTES,
        cores_used: cpu / n,
        network_in,
        network_out: network_in * input.kept_share,
        decisions_out: traces_per_sec * DECISION_RECORD_BYTES,
    })
}

fn mib(b: f64) -> String {
    format!("{:.0} MiB", b / f64::from(1u32 << 20))
}

fn mb_s(b: f64) -> String {
    format!("{:.1} MB/s", b / 1e6)
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "instances            {} ({:.2} cores each at the planned rate)",
            self.instances, self.cores_used
        )?;
        writeln!(
            f,
            "input partitions     {} (at least; twice the instances, room to double)",
            self.partitions
        )?;
        writeln!(
            f,
            "per instance buffer  {:.0} spans, {:.0} traces: {}",
            self.spans_buffered,
            self.traces_buffered,
            mib(self.buffer_bytes)
        )?;
        writeln!(f, "  decision cache     {}", mib(self.cache_bytes))?;
        writeln!(
            f,
            "  memory.limit       {} (buffer share {}, consumer queue {}, producer queue {})",
            mib(self.memory_limit as f64),
            mib(self.split.buffer as f64),
            mib(self.split.consumer_queue as f64),
            mib(self.split.producer_queue as f64)
        )?;
        writeln!(
            f,
            "  pod memory         {} (memory.limit + {} overhead)",
            mib(self.pod_memory as f64),
            mib(PROCESS_OVERHEAD_BYTES as f64)
        )?;
        writeln!(f, "network in           {}", mb_s(self.network_in))?;
        writeln!(
            f,
            "network out          {} (kept traces)",
            mb_s(self.network_out)
        )?;
        write!(
            f,
            "decisions topic      {} (if kafka.decisions_topic is set)",
            mb_s(self.decisions_out)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(spans_per_sec: f64, wait_s: u64) -> PlanInput {
        PlanInput {
            spans_per_sec,
            decision_wait: Duration::from_secs(wait_s),
            ..PlanInput::default()
        }
    }

    #[test]
    fn the_buffer_is_rate_times_wait_times_the_measured_costs() {
        let p = plan(&input(10_000.0, 30)).expect("plan");
        // 300k spans of 450 + 20 B and 15k traces of 126 B.
        let want = 300_000.0 * 470.0 + 15_000.0 * 126.0;
        assert!((p.buffer_bytes - want).abs() < 1.0, "{}", p.buffer_bytes);
        assert_eq!(p.instances, 1);
        assert!(p.split.buffer as f64 * 0.75 >= p.buffer_bytes + p.cache_bytes);
        // The smallest such limit: one MiB less does not fit.
        let smaller = MemoryConfig {
            limit: crate::config::ByteSize(p.memory_limit - (1 << 20)),
            ..MemoryConfig::default()
        };
        assert!((smaller.split().buffer as f64) * 0.75 < p.buffer_bytes + p.cache_bytes);
        assert_eq!(p.pod_memory, p.memory_limit + PROCESS_OVERHEAD_BYTES);
    }

    #[test]
    fn cpu_and_pod_memory_each_add_instances() {
        // 2M spans/s at 1.1 us = 2.2 cores of work: 2 instances of 2 cores at 70%.
        let p = plan(&input(2_000_000.0, 10)).expect("plan");
        assert_eq!(p.instances, 2);
        assert_eq!(p.partitions, 4);
        let bounded = plan(&PlanInput {
            memory_per_instance: Some(2 << 30),
            ..input(2_000_000.0, 10)
        })
        .expect("plan");
        assert!(bounded.instances > 2, "{bounded:?}");
        assert!(bounded.pod_memory <= 2 << 30);
        assert!(bounded.buffer_bytes * bounded.instances as f64 - p.buffer_bytes * 2.0 < 1.0);
    }

    #[test]
    fn bad_figures_are_refused_naming_the_option() {
        let e = plan(&input(0.0, 10)).expect_err("zero rate");
        assert!(e.to_string().contains("--spans-per-sec: 0"), "{e}");
        let e = plan(&PlanInput {
            kept_share: 2.0,
            ..input(1.0, 1)
        })
        .expect_err("share");
        assert!(e.to_string().contains("--kept-share"), "{e}");
        let e = plan(&PlanInput {
            memory_per_instance: Some(32 << 20),
            ..input(1000.0, 1)
        })
        .expect_err("pod below the overhead");
        assert!(e.to_string().contains("--memory-per-instance"), "{e}");
        // A rate no memory.limit holds is refused, not searched for ever.
        let e = plan(&PlanInput {
            cores_per_instance: 1e12,
            ..input(1e18, 3600)
        })
        .expect_err("too large");
        assert!(e.to_string().contains("--spans-per-sec"), "{e}");
    }
}
