//! Synthetic trace traffic of realistic shape, with the ground truth of every trace.
//!
//! Several services call each other in span trees 2-5 levels deep (10-30 spans per
//! trace, 300-600 encoded bytes per span); a configurable share of traces fail (one
//! span with status ERROR and `http.status_code` 500 on the root) or are slow (root
//! span well above the slow threshold); the rest stay well below it, so the ground
//! truth is unambiguous. Each trace is emitted as one OTLP request per service, keyed
//! by trace id, as the OTel Collector's kafka exporter does with
//! `partition_traces_by_id`.

mod feed;

pub use crate::clock::now_ns;
pub use feed::{feed, producer, send, FeedOptions, FeedStats};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    span, status, ResourceSpans, ScopeSpans, Span, Status,
};
use prost::Message;

use crate::codec::TraceId;

const SERVICES: &[&str] = &[
    "frontend",
    "checkout",
    "cart",
    "payment",
    "inventory",
    "shipping",
    "auth",
    "search",
];
const ROUTES: &[&str] = &[
    "/api/checkout",
    "/api/cart",
    "/api/search",
    "/api/products/{id}",
    "/api/login",
    "/api/orders/{id}",
    "/api/recommendations",
];
const OPERATIONS: &[&str] = &[
    "GET", "POST", "SELECT", "UPDATE", "publish", "process", "rpc",
];

/// Shape of the generated traffic.
#[derive(Debug, Clone)]
pub struct GenConfig {
    /// PRNG seed: the same seed gives the same traces.
    pub seed: u64,
    /// Share of traces with an error span (0..1).
    pub error_rate: f64,
    /// Share of slow traces (0..1).
    pub slow_rate: f64,
    /// Slow traces' root spans last at least 1.5x this; others at most 0.6x.
    pub slow_threshold_ms: u64,
}

impl Default for GenConfig {
    fn default() -> Self {
        GenConfig {
            seed: 42,
            error_rate: 0.03,
            slow_rate: 0.02,
            slow_threshold_ms: 1000,
        }
    }
}

/// The ground truth of one generated trace.
#[derive(Debug, Clone, PartialEq)]
pub struct Truth {
    /// Its id.
    pub trace_id: TraceId,
    /// Number of spans.
    pub spans: usize,
    /// Has a span with status ERROR.
    pub error: bool,
    /// Root span longer than the slow threshold.
    pub slow: bool,
    /// Root span duration.
    pub root_ms: u64,
    /// The `http.route` attribute of its spans.
    pub route: &'static str,
}

/// One generated trace: its truth and its messages (one per service).
#[derive(Debug, Clone)]
pub struct GeneratedTrace {
    /// Ground truth.
    pub truth: Truth,
    /// Encoded `ExportTraceServiceRequest`s, one per service involved.
    pub messages: Vec<Vec<u8>>,
}

/// SplitMix64: small, fast and good enough for synthetic traffic.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// Seeded generator.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `[lo, hi]`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[(self.next_u64() % items.len() as u64) as usize]
    }
}

/// Generates traces.
#[derive(Debug, Clone)]
pub struct Generator {
    cfg: GenConfig,
    rng: Rng,
}

struct Node {
    span_id: [u8; 8],
    parent: Option<[u8; 8]>,
    service: &'static str,
    start_ns: u64,
    end_ns: u64,
    depth: u32,
}

impl Generator {
    /// A generator with the given shape.
    pub fn new(cfg: GenConfig) -> Self {
        let rng = Rng::new(cfg.seed);
        Generator { cfg, rng }
    }

    /// The next trace, starting at `start_ns` (ns since the epoch).
    pub fn next_trace(&mut self, start_ns: u64) -> GeneratedTrace {
        let r = &mut self.rng;
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&r.next_u64().to_le_bytes());
        id[8..].copy_from_slice(&r.next_u64().to_le_bytes());
        let trace_id = TraceId(id);
        let error = r.unit() < self.cfg.error_rate;
        let slow = r.unit() < self.cfg.slow_rate;
        let t = self.cfg.slow_threshold_ms;
        // A long tail: slow traces 1.5x-8x the threshold, others 2 ms .. 0.6x of it,
        // skewed towards short.
        let root_ms = if slow {
            r.range(t * 3 / 2, t * 8)
        } else {
            let u = r.unit();
            2 + ((t as f64 * 0.6 - 2.0) * u * u * u) as u64
        };
        let n_spans = r.range(10, 30) as usize;
        let route = r.pick(ROUTES);
        let root_dur = root_ms * 1_000_000;
        let mut nodes = vec![Node {
            span_id: r.next_u64().max(1).to_le_bytes(),
            parent: None,
            service: "frontend",
            start_ns,
            end_ns: start_ns + root_dur,
            depth: 0,
        }];
        while nodes.len() < n_spans {
            // Parent: any node above depth 4, biased to recent ones for deep trees.
            let candidates: Vec<usize> = (0..nodes.len()).filter(|&i| nodes[i].depth < 4).collect();
            let pi = candidates[(r.next_u64() % candidates.len() as u64) as usize];
            let (ps, pe, pd, pid, psvc) = {
                let p = &nodes[pi];
                (p.start_ns, p.end_ns, p.depth, p.span_id, p.service)
            };
            let len = (pe - ps).max(2);
            let s = ps + r.next_u64() % (len / 2);
            let e = s + 1 + r.next_u64() % (pe - s).max(1);
            let service = if r.unit() < 0.6 {
                r.pick(SERVICES)
            } else {
                psvc
            };
            nodes.push(Node {
                span_id: r.next_u64().max(1).to_le_bytes(),
                parent: Some(pid),
                service,
                start_ns: s,
                end_ns: e.min(pe),
                depth: pd + 1,
            });
        }
        let error_at = if error {
            Some(1 + (r.next_u64() % (n_spans as u64 - 1)) as usize)
        } else {
            None
        };
        // Group spans by service, one request per service.
        let mut by_service: Vec<(&'static str, Vec<Span>)> = Vec::new();
        for (i, n) in nodes.iter().enumerate() {
            let is_error = error_at == Some(i);
            let span = make_span(r, &trace_id, n, route, i == 0, is_error, error);
            match by_service.iter_mut().find(|(s, _)| *s == n.service) {
                Some((_, v)) => v.push(span),
                None => by_service.push((n.service, vec![span])),
            }
        }
        let messages = by_service
            .into_iter()
            .map(|(svc, spans)| request(svc, spans).encode_to_vec())
            .collect();
        GeneratedTrace {
            truth: Truth {
                trace_id,
                spans: n_spans,
                error,
                slow,
                root_ms,
                route,
            },
            messages,
        }
    }
}

fn kv(key: &str, v: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(v) }),
        ..Default::default()
    }
}

fn s(v: &str) -> any_value::Value {
    any_value::Value::StringValue(v.into())
}

fn make_span(
    r: &mut Rng,
    trace_id: &TraceId,
    n: &Node,
    route: &str,
    root: bool,
    is_error: bool,
    trace_error: bool,
) -> Span {
    let op = r.pick(OPERATIONS);
    let code: i64 = if is_error || (root && trace_error) {
        500
    } else {
        200
    };
    let mut attributes = vec![
        kv("http.method", s(if op == "POST" { "POST" } else { "GET" })),
        kv("http.route", s(route)),
        kv("http.status_code", any_value::Value::IntValue(code)),
        kv(
            "net.peer.name",
            s(&format!("{}.prod.svc.cluster.local", n.service)),
        ),
        kv(
            "thread.id",
            any_value::Value::IntValue(r.range(1, 64) as i64),
        ),
    ];
    if op == "SELECT" || op == "UPDATE" {
        attributes.push(kv("db.system", s("postgresql")));
        attributes.push(kv(
            "db.statement",
            s(&format!(
                "{op} id, name, price, stock FROM products WHERE id = $1 AND tenant = $2 LIMIT {}",
                r.range(1, 100)
            )),
        ));
    } else {
        attributes.push(kv(
            "http.url",
            s(&format!(
                "https://{}.example.com{}?session={:016x}",
                n.service,
                route,
                r.next_u64()
            )),
        ));
        attributes.push(kv(
            "user_agent.original",
            s("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko)"),
        ));
    }
    let status = if is_error {
        Status {
            message: "upstream failed: connection reset by peer".into(),
            code: status::StatusCode::Error as i32,
        }
    } else {
        Status::default()
    };
    Span {
        trace_id: trace_id.0.to_vec(),
        span_id: n.span_id.to_vec(),
        parent_span_id: n.parent.map(|p| p.to_vec()).unwrap_or_default(),
        name: if root {
            format!("{} {}", "GET", route)
        } else {
            format!("{} {}", op, n.service)
        },
        kind: if root {
            span::SpanKind::Server as i32
        } else {
            span::SpanKind::Client as i32
        },
        start_time_unix_nano: n.start_ns,
        end_time_unix_nano: n.end_ns,
        attributes,
        status: Some(status),
        ..Default::default()
    }
}

fn request(service: &str, spans: Vec<Span>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![
                    kv("service.name", s(service)),
                    kv("service.version", s("1.4.2")),
                    kv("deployment.environment", s("production")),
                ],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "io.opentelemetry.http".into(),
                    version: "1.32.0".into(),
                    ..Default::default()
                }),
                spans,
                schema_url: String::new(),
            }],
            schema_url: "https://opentelemetry.io/schemas/1.21.0".into(),
        }],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traces_have_the_promised_shape() {
        let mut g = Generator::new(GenConfig::default());
        let mut errors = 0;
        let mut slow = 0;
        let mut bytes = 0;
        let mut spans = 0;
        for _ in 0..2000 {
            let t = g.next_trace(1_700_000_000_000_000_000);
            assert!((10..=30).contains(&t.truth.spans));
            if t.truth.slow {
                assert!(t.truth.root_ms >= 1500);
            } else {
                assert!(t.truth.root_ms <= 600);
            }
            errors += usize::from(t.truth.error);
            slow += usize::from(t.truth.slow);
            spans += t.truth.spans;
            bytes += t.messages.iter().map(Vec::len).sum::<usize>();
            let n: usize = t
                .messages
                .iter()
                .map(|m| {
                    let r = ExportTraceServiceRequest::decode(&m[..]).expect("valid OTLP");
                    r.resource_spans[0].scope_spans[0].spans.len()
                })
                .sum();
            assert_eq!(n, t.truth.spans);
        }
        assert!((30..=100).contains(&errors), "errors {errors}");
        assert!((20..=70).contains(&slow), "slow {slow}");
        let per_span = bytes / spans;
        assert!((300..=600).contains(&per_span), "bytes per span {per_span}");
    }
}
