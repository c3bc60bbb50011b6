//! Config parsing and validation: what a user sees when they get it wrong.

use super::*;

const MINIMAL: &str = r#"
kafka:
  brokers: localhost:9092
  input_topics: [spans]
  output_topic: sampled
policies:
  - {name: all, type: always_sample}
"#;

fn err(yaml: &str) -> String {
    match Config::from_yaml(yaml) {
        Ok(_) => panic!("config was accepted:\n{yaml}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn example_config_is_valid_and_complete() {
    let text = include_str!("../../tailsift.example.yaml");
    let cfg = Config::from_yaml(text).expect("example config is valid");
    assert_eq!(cfg.policies.len(), 10);
    assert_eq!(
        cfg.buffer.decision_wait.0,
        std::time::Duration::from_secs(30)
    );
    // Every BufferConfig / KafkaConfig field is shown in the example.
    for key in [
        "decision_wait:",
        "decision_wait_after_root_received:",
        "shards:",
        "decision_cache_traces:",
        "brokers:",
        "group_id:",
        "input_topics:",
        "output_topic:",
        "dead_letter_topic:",
        "decisions_topic:",
        "decisions_window:",
        "max_message_bytes:",
        "compression:",
        "commit_interval:",
        "consumer:",
        "producer:",
        "listen:",
        "limit:",
        "high_watermark:",
        "low_watermark:",
        "max_spans:",
        "max_bytes:",
        "annotate:",
        "create_missing_topics:",
        "replication_factor:",
        "sample_on_first_match:",
        "topic:",
    ] {
        assert!(text.contains(key), "example config lacks `{key}`");
    }
}

#[test]
fn defaults_apply() {
    let cfg = Config::from_yaml(MINIMAL).expect("valid");
    assert_eq!(cfg.kafka.group_id, "tailsift");
    assert_eq!(cfg.kafka.dead_letter_topic, "tailsift-dead-letter");
    assert_eq!(cfg.buffer.decision_wait.0.as_secs(), 30);
    assert!(cfg.buffer.decision_wait_after_root_received.is_none());
    assert!(cfg.shard_count() >= 1);
}

#[test]
fn unknown_fields_are_rejected_with_their_name() {
    let e = err(&MINIMAL.replace("brokers:", "brokerz: x\n  brokers:"));
    assert!(e.contains("unknown field `brokerz`"), "{e}");
    let e = err(&MINIMAL.replace("type: always_sample}", "type: always_sample, sampling: 3}"));
    assert!(e.contains("unknown field `sampling`"), "{e}");
}

#[test]
fn bad_values_name_field_value_and_expectation() {
    let cases = [
        (
            "{name: p, type: probabilistic, probabilistic: {sampling_percentage: 150}}",
            "config field `policies[0].probabilistic.sampling_percentage` = 150: expected a percentage from 0 to 100",
        ),
        (
            "{name: s, type: status_code, status_code: {status_codes: [BROKEN]}}",
            "config field `policies[0].status_code.status_codes[0]` = BROKEN: expected one of OK, ERROR, UNSET",
        ),
        (
            "{name: l, type: latency}",
            "policies: policy `l`, field `latency` = nothing: expected a `latency:` block for a policy of type `latency` at line 7",
        ),
        (
            "{name: l, type: latency, latency: {threshold_ms: 500, upper_threshold_ms: 100}}",
            "config field `policies[0].latency.upper_threshold_ms` = 100: expected 0 (no upper bound) or above threshold_ms (500): the lower bound is exclusive then, so nothing would match",
        ),
        (
            "{name: r, type: string_attribute, string_attribute: {key: k, values: ['('], enabled_regex_matching: true}}",
            "config field `policies[0].string_attribute.values[0]` = \"(\"",
        ),
        (
            "{name: a, type: always_sample, latency: {threshold_ms: 1}}",
            "policies: policy `a`, field `latency` = a block: expected no `latency` block on a policy of type `always_sample` at line 7",
        ),
        (
            "{name: b, type: and, and: {and_sub_policy: [{name: slow, type: latency}]}}",
            "policies[0].and.and_sub_policy: policy `slow`, field `latency` = nothing: expected a `latency:` block",
        ),
    ];
    for (policy, want) in cases {
        let yaml = MINIMAL.replace("{name: all, type: always_sample}", policy);
        let e = err(&yaml);
        assert!(e.contains(want), "got: {e}\nwant: {want}");
    }
    let e = err(&MINIMAL.replace(
        "policies:\n  - {name: all, type: always_sample}",
        "policies: []",
    ));
    assert!(e.contains("`policies` = []"), "{e}");
    let e = err(&format!(
        "{MINIMAL}  - {{name: all, type: always_sample}}\n"
    ));
    assert!(
        e.contains("`policies[1].name` = all: expected a unique name"),
        "{e}"
    );
    let e = err(&MINIMAL.replace("output_topic: sampled", "output_topic: spans"));
    assert!(e.contains("`kafka.output_topic` = spans"), "{e}");
    let e = err(&format!("{MINIMAL}buffer: {{decision_wait: 10parsecs}}\n"));
    assert!(e.contains("unsupported unit \"parsecs\""), "{e}");
    let e = err(&MINIMAL.replace(
        "brokers: localhost:9092",
        "brokers: localhost:9092\n  consumer: {enable.auto.commit: 'true'}",
    ));
    assert!(e.contains("`kafka.consumer.enable.auto.commit`"), "{e}");
    let e = err(&MINIMAL.replace(
        "brokers: localhost:9092",
        "brokers: localhost:9092\n  consumer: {statistics.interval.ms: '0'}",
    ));
    assert!(
        e.contains("`kafka.consumer.statistics.interval.ms` = 0: expected a positive interval"),
        "{e}"
    );
    let e = err(&format!("{MINIMAL}memory: {{limit: 8MiB}}\n"));
    assert!(
        e.contains("`memory.limit` = 8MiB: expected at least 16MiB"),
        "{e}"
    );
    let e = err(&format!("{MINIMAL}memory: {{limit: lots}}\n"));
    assert!(e.contains("expected a size such as `512MiB`"), "{e}");
    let e = err(&format!(
        "{MINIMAL}memory: {{high_watermark: 0.5, low_watermark: 0.6}}\n"
    ));
    assert!(
        e.contains(
            "`memory.low_watermark` = 0.6: expected a share above 0 and below high_watermark (0.5)"
        ),
        "{e}"
    );
    let e = err(&format!(
        "{MINIMAL}memory: {{limit: 64MiB}}\ntrace: {{max_bytes: 40MiB}}\n"
    ));
    assert!(
        e.contains(
            "`trace.max_bytes` = 40MiB: expected between 1 byte and half the buffer budget (26MiB)"
        ),
        "{e}"
    );
    let e = err(&format!("{MINIMAL}policies_typo: 1\n"));
    assert!(e.contains("unknown field `policies_typo`"), "{e}");
}

#[test]
fn unsupported_policy_type_lists_the_supported_ones() {
    let e = err(&MINIMAL.replace("type: always_sample", "type: head_sampling"));
    assert!(e.contains("unknown variant `head_sampling`"), "{e}");
    assert!(e.contains("always_sample"), "{e}");
}

#[test]
fn boolean_attribute_and_span_count_blocks_load_and_are_checked() {
    let ok = MINIMAL.replace(
        "  - {name: all, type: always_sample}",
        "  - {name: retried, type: boolean_attribute, boolean_attribute: {key: retry, value: true}}\n  - {name: big, type: span_count, span_count: {min_spans: 2, max_spans: 20}}",
    );
    let cfg = Config::from_yaml(&ok).expect("valid");
    assert_eq!(cfg.policies.len(), 2);
    let e = err(&ok.replace("max_spans: 20", "max_spans: 1"));
    assert!(
        e.contains("`policies[1].span_count.max_spans` = 1: expected 0 (no upper bound) or at least min_spans (2)"),
        "{e}"
    );
    let e = err(&ok.replace("key: retry", "key: \"\""));
    assert!(e.contains("policies[0].boolean_attribute.key"), "{e}");
}

#[test]
fn rate_and_bytes_limiting_blocks_load_and_need_a_rate() {
    let ok = MINIMAL.replace(
        "  - {name: all, type: always_sample}",
        "  - {name: budget, type: rate_limiting, rate_limiting: {spans_per_second: 1000}}\n  - {name: bytes, type: bytes_limiting, bytes_limiting: {bytes_per_second: 1000000, burst_capacity: 5000000}}",
    );
    let cfg = Config::from_yaml(&ok).expect("valid");
    assert_eq!(cfg.policies.len(), 2);
    let e = err(&ok.replace("spans_per_second: 1000", "spans_per_second: 0"));
    assert!(
        e.contains("`policies[0].rate_limiting.spans_per_second` = 0: expected a rate above 0"),
        "{e}"
    );
}

/// The kafka section every test config needs.
const KAFKA: &str =
    "kafka: {brokers: localhost:9092, input_topics: [spans], output_topic: sampled}\n";

#[test]
fn an_otel_processor_block_loads_as_pasted() {
    // A Collector config's `processors:` section, as written for the OTel processor.
    let otel = r#"
processors:
  tail_sampling:
    decision_wait: 10s
    expected_new_traces_per_sec: 10
    policies:
      [
          {
            name: test-policy-1,
            type: always_sample
          },
          {
            name: test-policy-2,
            type: latency,
            latency: {threshold_ms: 5000, upper_threshold_ms: 10000}
          },
          {
            name: test-policy-3,
            type: numeric_attribute,
            numeric_attribute: {key: key1, min_value: 50, max_value: 100}
          },
          {
            name: test-policy-4,
            type: probabilistic,
            probabilistic: {sampling_percentage: 10}
          },
          {
            name: test-policy-5,
            type: status_code,
            status_code: {status_codes: [ERROR, UNSET]}
          },
          {
            name: test-policy-6,
            type: string_attribute,
            string_attribute: {key: key2, values: [value1, value2]}
          },
          {
            name: test-policy-7,
            type: string_attribute,
            string_attribute: {key: key2, values: [value1, val*], enabled_regex_matching: true, cache_max_size: 10}
          },
          {
            name: test-policy-8,
            type: rate_limiting,
            rate_limiting: {spans_per_second: 35}
          },
          {
            name: test-policy-9,
            type: string_attribute,
            string_attribute: {key: http.url, values: [\/health, \/metrics], enabled_regex_matching: true}
          },
          {
            name: test-policy-10,
            type: span_count,
            span_count: {min_spans: 2, max_spans: 20}
          },
          {
            name: test-policy-11,
            type: trace_state,
            trace_state: { key: key3, values: [value1, value2] }
          },
          {
            name: test-policy-12,
            type: boolean_attribute,
            boolean_attribute: {key: key4, value: true}
          },
          {
            name: and-policy-1,
            type: and,
            and: {
              and_sub_policy:
              [
                {
                  name: test-and-policy-1,
                  type: numeric_attribute,
                  numeric_attribute: { key: key1, min_value: 50, max_value: 100 }
                },
                {
                    name: test-and-policy-2,
                    type: string_attribute,
                    string_attribute: { key: key2, values: [ value1, value2 ] }
                },
              ]
            }
          },
          {
            name: drop-it,
            type: drop,
            drop: {
              drop_sub_policy:
              [
                {
                  name: healthcheck,
                  type: string_attribute,
                  string_attribute: {key: http.route, values: [ /healthz ]},
                }
              ]
            }
          },
        ]
"#;
    let cfg = Config::from_yaml(&format!("{KAFKA}{otel}")).expect("the OTel block loads");
    assert_eq!(cfg.policies.len(), 14);
    assert_eq!(
        cfg.buffer.decision_wait.0,
        std::time::Duration::from_secs(10)
    );
    crate::policy::PolicySet::build(&cfg.policies).expect("and builds");
    // The bare map under `tail_sampling:` too.
    let bare = otel.replace("processors:\n  tail_sampling:", "tail_sampling:");
    let bare = bare.replace("\n    ", "\n  ");
    assert_eq!(
        Config::from_yaml(&format!("{KAFKA}{bare}"))
            .expect("bare block loads")
            .policies
            .len(),
        14
    );
}

#[test]
fn otel_processor_keys_without_a_tailsift_meaning_say_what_to_use() {
    let block = |extra: &str| {
        format!(
            "{KAFKA}tail_sampling:\n  {extra}\n  policies: [{{name: all, type: always_sample}}]\n"
        )
    };
    let cfg = Config::from_yaml(&block("num_traces: 50000")).expect("accepted");
    assert_eq!(cfg.warnings.len(), 1, "{:?}", cfg.warnings);
    assert!(
        cfg.warnings[0].contains("tail_sampling.num_traces (50000) is not used")
            && cfg.warnings[0].contains("memory.limit (512MiB)"),
        "{:?}",
        cfg.warnings
    );
    let cfg = Config::from_yaml(&block("expected_new_traces_per_sec: 10")).expect("accepted");
    assert!(cfg.warnings[0].contains("expected_new_traces_per_sec (10) is not used"));
    let cfg = Config::from_yaml(&block(
        "decision_cache: {sampled_cache_size: 100_000, non_sampled_cache_size: 5000}",
    ))
    .expect("decision_cache maps");
    assert_eq!(cfg.buffer.decision_cache_traces, 105_000);
    let e = err(&block("decision_cache: {sampled_cache_size: lots}"));
    assert!(e.contains("100_000"), "{e}");
    let cfg = Config::from_yaml(&block("sample_on_first_match: true")).expect("maps");
    assert!(cfg.sample_on_first_match);
    let cfg = Config::from_yaml(&block("block_on_overflow: true")).expect("accepted");
    assert!(
        cfg.warnings[0].contains("block_on_overflow (true) is not used")
            && cfg.warnings[0].contains("memory.high_watermark"),
        "{:?}",
        cfg.warnings
    );
    let e = err(&format!(
        "{}policies: [{{name: x, type: always_sample}}]\n",
        block("decision_wait: 5s")
    ));
    assert!(e.contains("keep one of them"), "{e}");
}

/// The keys newer Collectors (~v0.141-v0.159) added to the processor load as
/// pasted: mapped where tailsift has the setting, else one warning each saying what
/// tailsift does instead.
#[test]
fn newer_collector_processor_keys_map_or_warn() {
    let cfg = Config::from_yaml(&format!(
        "{KAFKA}tail_sampling:\n  decision_wait: 10s\n  decision_wait_after_root_received: 2s\n  num_shards: 4\n  maximum_trace_size_bytes: 1048576\n  drop_pending_traces_on_shutdown: true\n  sampling_strategy: trace-complete\n  policies: [{{name: all, type: always_sample}}]\n"
    ))
    .expect("a current Collector block loads");
    assert_eq!(
        cfg.buffer.decision_wait_after_root_received.map(|d| d.0),
        Some(std::time::Duration::from_secs(2))
    );
    assert_eq!(cfg.buffer.shards, 4);
    assert_eq!(cfg.trace.max_bytes.map(|b| b.0), Some(1_048_576));
    let warned = |key: &str| cfg.warnings.iter().any(|w| w.contains(key));
    assert!(
        warned("maximum_trace_size_bytes (1048576) is taken as trace.max_bytes")
            && warned("drop_pending_traces_on_shutdown (true) is not used")
            && warned("sampling_strategy (trace-complete) is not used"),
        "{:?}",
        cfg.warnings
    );
    assert_eq!(cfg.warnings.len(), 3, "{:?}", cfg.warnings);
}

/// The example config of the OTel `tail_sampling` processor's README, verbatim
/// (`otel_readme_example.yaml`): every policy type it shows loads and builds. Its
/// `num_traces` and `expected_new_traces_per_sec` have no tailsift meaning: each is
/// accepted with one warning saying what tailsift does instead. Its first policy,
/// `always_sample`, keeps every trace, which makes the non-vetoing policies after it
/// moot: that is said too (the Collector does not say it).
#[test]
fn the_otel_readme_example_loads_verbatim() {
    let example = include_str!("otel_readme_example.yaml");
    let cfg = Config::from_yaml(&format!("{KAFKA}{example}")).expect("the README example loads");
    assert_eq!(cfg.warnings.len(), 3, "{:?}", cfg.warnings);
    assert!(
        cfg.warnings[0].contains("processors.tail_sampling.num_traces (100)")
            && cfg.warnings[0].contains("memory.limit")
            && cfg.warnings[1].contains("expected_new_traces_per_sec (10)")
            && cfg.warnings[2].contains("policies[0] (test-policy-1) keeps every trace"),
        "{:?}",
        cfg.warnings
    );
    assert_eq!(cfg.policies.len(), 16);
    assert_eq!(cfg.buffer.decision_cache_traces, 200_000);
    assert_eq!(
        cfg.buffer.decision_wait.0,
        std::time::Duration::from_secs(10)
    );
    let set = crate::policy::PolicySet::build(&cfg.policies).expect("and builds");
    let names: Vec<&str> = set.policies.iter().map(|p| &*p.name).collect();
    assert_eq!(names[12], "test-policy-13");
    assert_eq!(names[15], "composite-policy-1");
    let tree = crate::check::policy_tree(&cfg.policies, 0);
    assert!(
        tree.contains("- composite-policy-1 [composite] the first of, within 1000 spans/s (spans/s each: test-composite-policy-1 500, test-composite-policy-2 250, test-composite-policy-3 250):"),
        "{tree}"
    );
}

#[test]
fn topics_that_would_feed_themselves_or_that_kafka_refuses_are_refused() {
    let dlq_is_input = MINIMAL.replace(
        "output_topic: sampled",
        "output_topic: sampled\n  dead_letter_topic: spans",
    );
    let e = err(&dlq_is_input);
    assert!(
        e.contains("kafka.dead_letter_topic") && e.contains("input topic"),
        "{e}"
    );
    let dlq_is_output = MINIMAL.replace(
        "output_topic: sampled",
        "output_topic: sampled\n  dead_letter_topic: sampled",
    );
    let e = err(&dlq_is_output);
    assert!(
        e.contains("kafka.dead_letter_topic") && e.contains("output_topic"),
        "{e}"
    );
    let policy_to_input =
        MINIMAL.replace("type: always_sample}", "type: always_sample, topic: spans}");
    let e = err(&policy_to_input);
    assert!(
        e.contains("policies[0].topic") && e.contains("input"),
        "{e}"
    );
    for bad in [".", "..", "bad topic!"] {
        let yaml = MINIMAL.replace("output_topic: sampled", &format!("output_topic: {bad:?}"));
        let e = err(&yaml);
        assert!(
            e.contains("kafka.output_topic") && e.contains("[a-zA-Z0-9._-]"),
            "{bad}: {e}"
        );
        let yaml = MINIMAL.replace(
            "type: always_sample}",
            &format!("type: always_sample, topic: {bad:?}}}"),
        );
        let e = err(&yaml);
        assert!(e.contains("policies[0].topic"), "{bad}: {e}");
    }
}

#[test]
fn librdkafka_properties_are_checked_at_load_and_their_values_never_shown() {
    let secret = "hunter2-SECRET";
    for (section, key) in [
        ("consumer", "sasl.passwrod"),
        ("producer", "compression.codec"),
    ] {
        let yaml = MINIMAL.replace(
            "output_topic: sampled",
            &format!("output_topic: sampled\n  {section}: {{{key}: {secret}}}"),
        );
        let e = err(&yaml);
        assert!(e.contains(&format!("kafka.{section}.{key}")), "{e}");
        assert!(!e.contains(secret), "the value leaked: {e}");
    }
    // Some values librdkafka only checks when a client is made (no broker is
    // contacted: no bootstrap servers are given to it).
    let yaml = MINIMAL.replace(
        "output_topic: sampled",
        &format!("output_topic: sampled\n  producer: {{security.protocol: sasl_plaintext, sasl.mechanism: {secret}}}"),
    );
    let cfg = Config::from_yaml(&yaml).expect("each property is well-formed alone");
    let e = cfg
        .kafka
        .check_clients()
        .expect_err("refused by librdkafka")
        .to_string();
    assert!(e.contains("kafka.producer") && !e.contains(secret), "{e}");
    let reserved = MINIMAL.replace(
        "output_topic: sampled",
        &format!("output_topic: sampled\n  consumer: {{group.id: {secret}}}"),
    );
    let e = err(&reserved);
    assert!(
        e.contains("kafka.consumer.group.id") && !e.contains(secret),
        "{e}"
    );
    let fine = MINIMAL.replace(
        "output_topic: sampled",
        "output_topic: sampled\n  consumer: {security.protocol: sasl_ssl, sasl.mechanism: SCRAM-SHA-512, sasl.username: u, sasl.password: p}",
    );
    assert!(Config::from_yaml(&fine).is_ok());
}

#[test]
fn sizes_and_durations_say_unsupported_or_too_large_not_malformed() {
    let with =
        |key: &str, v: &str| MINIMAL.replace("policies:", &format!("{key}\n  {v}\npolicies:"));
    let e = err(&with("memory:", "limit: 1PiB"));
    assert!(e.contains("unsupported unit") && e.contains("PiB"), "{e}");
    let yaml = with("memory:", "limit: 1TiB");
    let cfg = Config::from_yaml(&yaml).expect("TiB is a unit");
    assert_eq!(cfg.memory.limit.0, 1 << 40);
    assert_eq!(
        Config::from_yaml(&with("memory:", "limit: 2Gi"))
            .expect("Kubernetes units")
            .memory
            .limit
            .0,
        2 << 30
    );
    let e = err(&with("buffer:", "decision_wait: 1000000h"));
    assert!(e.contains("too long"), "{e}");
    let e = err(&with("buffer:", "decision_wait: 30"));
    assert!(e.contains("without a unit"), "{e}");
    let e = err(&with("buffer:", "decision_wait: 3 parsecs"));
    assert!(e.contains("unsupported unit"), "{e}");
}

#[test]
fn file_errors_say_their_cause_once() {
    let e = Config::load(std::path::Path::new("/nonexistent/tailsift.yaml")).expect_err("no file");
    let chain = format!("{:#}", anyhow::Error::from(e));
    assert_eq!(chain.matches("No such file").count(), 1, "{chain}");
    let dir = std::env::temp_dir().join(format!("tailsift-cfg-{}.yaml", std::process::id()));
    std::fs::write(&dir, "kafka: [").expect("write");
    let e = Config::load(&dir).expect_err("bad YAML");
    let _ = std::fs::remove_file(&dir);
    let chain = format!("{:#}", anyhow::Error::from(e));
    let first_line = chain.lines().next().unwrap_or_default().to_string();
    assert_eq!(
        chain
            .matches(&first_line[first_line.len().saturating_sub(20)..])
            .count(),
        1,
        "{chain}"
    );
}

#[test]
fn exactly_once_needs_a_decisions_topic_and_owns_the_transactional_id() {
    let eos = MINIMAL.replace(
        "  output_topic: sampled\n",
        "  output_topic: sampled\n  exactly_once: true\n",
    );
    let e = err(&eos);
    assert!(
        e.contains("kafka.exactly_once") && e.contains("kafka.decisions_topic"),
        "{e}"
    );
    let with_decisions = eos.replace(
        "  exactly_once: true\n",
        "  exactly_once: true\n  decisions_topic: decisions\n",
    );
    let cfg = Config::from_yaml(&with_decisions).expect("exactly-once with decisions");
    assert!(cfg.kafka.exactly_once);
    let shared_id = with_decisions.replace(
        "  exactly_once: true\n",
        "  exactly_once: true\n  producer: {transactional.id: \"secret-ish\"}\n",
    );
    let e = err(&shared_id);
    assert!(e.contains("kafka.producer.transactional.id"), "{e}");
    assert!(!e.contains("secret-ish"), "the value is never echoed: {e}");
    assert!(
        !Config::from_yaml(MINIMAL)
            .expect("minimal")
            .kafka
            .exactly_once
    );
}

/// Secrets and settings from the environment or mounted files, as in the Collector:
/// resolved in values, typed when a whole value, an error naming field and
/// reference when unresolvable.
#[test]
fn env_and_file_references_resolve_and_unresolved_ones_are_named() {
    let dir = std::env::temp_dir().join(format!("tailsift-subst-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let secret = dir.join("password");
    std::fs::write(&secret, "p@ss: #word\n").expect("secret file");
    // A variable no test environment sets, and one every process has.
    let yaml = format!(
        "kafka:\n  brokers: ${{env:TAILSIFT_TEST_UNSET_BROKERS:-127.0.0.1:9092}}\n  input_topics: [in]\n  output_topic: out-${{env:TAILSIFT_TEST_UNSET:-x}}\n  client: {{sasl.password: \"${{file:{}}}\"}}\nbuffer:\n  shards: ${{env:TAILSIFT_TEST_UNSET_SHARDS:-3}}\npolicies:\n  - {{name: all, type: always_sample}}\n",
        secret.display()
    );
    let cfg = Config::from_yaml(&yaml).expect("resolves");
    assert_eq!(cfg.kafka.brokers, "127.0.0.1:9092");
    assert_eq!(cfg.kafka.output_topic, "out-x");
    assert_eq!(cfg.buffer.shards, 3, "a whole-value reference is typed");
    assert_eq!(cfg.kafka.producer["sasl.password"], "p@ss: #word");
    let e = err(&yaml.replace("TAILSIFT_TEST_UNSET:-x", "TAILSIFT_TEST_UNSET"));
    assert!(
        e.contains("kafka.output_topic") && e.contains("${env:TAILSIFT_TEST_UNSET}"),
        "{e}"
    );
    let missing = dir.join("missing");
    let e = err(&yaml.replace(
        &secret.display().to_string(),
        &missing.display().to_string(),
    ));
    assert!(
        e.contains("kafka.client.sasl.password") && e.contains("readable file"),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A file with `${...}` in it behaves like one without: property values written as
/// numbers load, schema errors keep their field and line, and no error shows a
/// resolved value (a secret) or reads a file without end.
#[test]
fn a_config_with_references_errs_like_one_without_and_never_shows_a_resolved_value() {
    let dir = std::env::temp_dir().join(format!("tailsift-refs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let secret = dir.join("secret");
    std::fs::write(&secret, "hunter2-very-secret\n").expect("secret file");
    let pct = dir.join("pct");
    std::fs::write(&pct, "150\n").expect("pct file");
    let base = |extra: &str| {
        format!(
            "kafka:\n  brokers: localhost:9092\n  input_topics: [in]\n  output_topic: out\n  client: {{sasl.password: \"${{file:{}}}\"}}\n  consumer: {{session.timeout.ms: 45000, enable.partition.eof: false}}\n{extra}policies:\n  - {{name: all, type: always_sample}}\n",
            secret.display()
        )
    };
    // Unquoted numbers and booleans in a property map, beside a reference.
    let cfg = Config::from_yaml(&base("")).expect("loads");
    assert_eq!(cfg.kafka.consumer["session.timeout.ms"], "45000");
    assert_eq!(cfg.kafka.consumer["enable.partition.eof"], "false");
    // An unknown key: serde's error with its path and line, as without references.
    let e = err(&base("  bogus: 1\n"));
    assert!(
        e.contains("kafka: unknown field `bogus`") && e.contains("line 7"),
        "{e}"
    );
    // A resolved value of the wrong type: the field, the reference, not the value.
    let e = err(&base(&format!(
        "buffer:\n  shards: \"${{file:{}}}\"\n",
        secret.display()
    )));
    assert!(e.contains("buffer.shards") && e.contains("${file:"), "{e}");
    assert!(!e.contains("hunter2"), "{e}");
    // A resolved value out of range: shown as written.
    let e = err(&base("").replace(
        "  - {name: all, type: always_sample}",
        &format!(
            "  - {{name: p, type: probabilistic, probabilistic: {{sampling_percentage: \"${{file:{}}}\"}}}}",
            pct.display()
        ),
    ));
    assert!(
        e.contains("sampling_percentage") && e.contains("${file:"),
        "{e}"
    );
    assert!(!e.contains("150"), "{e}");
    // Files that never end or block are refused, naming the field.
    let e = err(&base("").replace(&secret.display().to_string(), "/dev/zero"));
    assert!(
        e.contains("kafka.client.sasl.password") && e.contains("not a regular file"),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `kafka.client` reaches every client once; `consumer`/`producer` override per key;
/// brokers may be a list.
#[test]
fn one_client_block_for_every_client_and_brokers_as_a_list() {
    let cfg = Config::from_yaml(
        "kafka:\n  brokers: [a:9092, b:9092]\n  input_topics: [in]\n  output_topic: out\n  client: {security.protocol: SASL_SSL, sasl.mechanism: SCRAM-SHA-512, client.id: shared}\n  producer: {client.id: mine}\npolicies:\n  - {name: all, type: always_sample}\n",
    )
    .expect("valid");
    assert_eq!(cfg.kafka.brokers, "a:9092,b:9092");
    for props in [&cfg.kafka.consumer, &cfg.kafka.producer] {
        assert_eq!(props["security.protocol"], "SASL_SSL");
        assert_eq!(props["sasl.mechanism"], "SCRAM-SHA-512");
    }
    assert_eq!(cfg.kafka.consumer["client.id"], "shared");
    assert_eq!(cfg.kafka.producer["client.id"], "mine");
    let e =
        err("kafka:\n  brokers: {a: 1}\n  input_topics: [in]\n  output_topic: out\npolicies: []\n");
    assert!(e.contains("host:port"), "{e}");
    let e = err("kafka:\n  brokers: x:1\n  input_topics: [in]\n  output_topic: out\n  client: {enable.auto.commit: \"true\"}\npolicies:\n  - {name: all, type: always_sample}\n");
    assert!(e.contains("kafka.consumer.enable.auto.commit"), "{e}");
}

#[test]
fn the_route_section_names_input_topics_and_targets_of_their_own() {
    let cfg = Config::from_yaml(&format!("{MINIMAL}route:\n  topics: [spans]\n")).expect("valid");
    let route = cfg.route.as_ref().expect("route");
    assert_eq!(route.target_of("spans"), "spans-by-trace");
    assert!(route.in_process);
    assert_eq!(
        route.group_of(&cfg.kafka),
        format!("{}-route", cfg.kafka.group_id)
    );
    let sampled = cfg.sampler_kafka();
    assert_eq!(sampled.input_topics, vec!["spans-by-trace".to_string()]);
    assert_eq!(
        sampled.encoding_of("spans-by-trace"),
        crate::codec::InputEncoding::OtlpProto,
        "routed records are OTLP protobuf whatever the input's encoding"
    );
    let e = err(&format!("{MINIMAL}route:\n  topics: [other]\n"));
    assert!(
        e.contains("route.topics[0]") && e.contains("other") && e.contains("kafka.input_topics"),
        "{e}"
    );
    let e = err(&format!(
        "{MINIMAL}route:\n  topics: [spans]\n  target: sampled\n"
    ));
    assert!(e.contains("route.target") && e.contains("sampled"), "{e}");
    let e = err(&format!("{MINIMAL}route:\n  topics: []\n"));
    assert!(e.contains("route.topics"), "{e}");
    let e = err(&format!(
        "{MINIMAL}route:\n  topics: [spans]\n  tagret: x\n"
    ));
    assert!(e.contains("tagret"), "an unknown key: {e}");
}

#[test]
fn brokers_lists_with_an_empty_entry_are_refused() {
    for brokers in ["\" , \"", "\"a:9092,,b:9092\"", "\"a:9092, \""] {
        let e = err(&MINIMAL.replace("brokers: localhost:9092", &format!("brokers: {brokers}")));
        assert!(
            e.contains("kafka.brokers") && e.contains("no entry empty"),
            "{brokers}: {e}"
        );
    }
    // As `--brokers` / TAILSIFT_BROKERS set it after the file was read.
    let mut cfg = Config::from_yaml(MINIMAL).expect("valid");
    cfg.kafka.brokers = " , ".to_string();
    let e = cfg.validate().expect_err("refused").to_string();
    assert!(e.contains("kafka.brokers"), "{e}");
}

#[test]
fn a_policy_topic_tailsift_reads_or_writes_other_records_to_is_refused() {
    let routed = format!(
        "{}route:\n  topics: [spans]\n",
        MINIMAL.replace(
            "type: always_sample}",
            "type: always_sample, topic: spans-by-trace}"
        )
    );
    let e = err(&routed);
    assert!(
        e.contains("policies[0].topic")
            && e.contains("spans-by-trace")
            && e.contains("route.target"),
        "{e}"
    );
    let decisions = MINIMAL
        .replace(
            "output_topic: sampled",
            "output_topic: sampled\n  decisions_topic: decided",
        )
        .replace(
            "type: always_sample}",
            "type: always_sample, topic: decided}",
        );
    let e = err(&decisions);
    assert!(
        e.contains("policies[0].topic") && e.contains("kafka.decisions_topic"),
        "{e}"
    );
    let e = err(&format!(
        "{MINIMAL}route:\n  topics: [spans]\n  target: \"{{topic}} by trace\"\n"
    ));
    assert!(
        e.contains("route.target") && e.contains("spans by trace"),
        "{e}"
    );
    let long = "x".repeat(245);
    let e = err(&format!(
        "{MINIMAL}route:\n  topics: [spans]\n  target: \"{{topic}}-{long}\"\n"
    ));
    assert!(e.contains("route.target"), "{e}");
}

/// What the Collector does not say: an `always_sample` (or an `and` of them) keeps
/// every trace, so the non-vetoing policies after it are moot.
#[test]
fn a_policy_that_keeps_everything_names_the_policies_it_makes_moot() {
    let cfg = Config::from_yaml(&format!(
        "{KAFKA}policies:\n  - {{name: errors, type: status_code, status_code: {{status_codes: [ERROR]}}}}\n  - {{name: everything, type: and, and: {{and_sub_policy: [{{name: a, type: always_sample}}]}}}}\n  - {{name: slow, type: latency, latency: {{threshold_ms: 100}}}}\n  - {{name: not-health, type: string_attribute, string_attribute: {{key: http.route, values: [/health], invert_match: true}}}}\n"
    ))
    .expect("valid");
    assert_eq!(cfg.warnings.len(), 1, "{:?}", cfg.warnings);
    let w = &cfg.warnings[0];
    assert!(
        w.contains("policies[1] (everything) keeps every trace") && w.contains("[\"slow\"]"),
        "{w}"
    );
    let last = Config::from_yaml(&format!(
        "{KAFKA}policies:\n  - {{name: slow, type: latency, latency: {{threshold_ms: 100}}}}\n  - {{name: rest, type: always_sample}}\n"
    ))
    .expect("valid");
    assert!(last.warnings.is_empty(), "{:?}", last.warnings);
}

/// A whole Collector config file loads: the first tail_sampling processor (plain or
/// named), the kafka receiver's brokers, topic and encoding, the kafka exporter's
/// topic as the output, each unless tailsift's own `kafka:` sets it; and says so.
#[test]
fn a_whole_collector_config_is_read_for_what_tailsift_means() {
    let collector = "receivers:\n  otlp: {protocols: {grpc: {}}}\n  kafka:\n    brokers: [\"kafka-1:9092\", \"kafka-2:9092\"]\n    traces:\n      topic: otlp_spans\n      encoding: otlp_json\nprocessors:\n  batch: {}\n  tail_sampling/errors:\n    decision_wait: 10s\n    policies:\n      - {name: errors, type: status_code, status_code: {status_codes: [ERROR]}}\nexporters:\n  kafka:\n    brokers: [\"kafka-1:9092\"]\n    topic: otlp_spans_sampled\nservice:\n  pipelines:\n    traces: {receivers: [kafka], processors: [tail_sampling/errors, batch], exporters: [kafka]}\n";
    let cfg = Config::from_yaml(collector).expect("a Collector config loads");
    assert_eq!(cfg.kafka.brokers, "kafka-1:9092,kafka-2:9092");
    assert_eq!(cfg.kafka.input_topics, ["otlp_spans"]);
    assert_eq!(cfg.kafka.output_topic, "otlp_spans_sampled");
    assert_eq!(
        cfg.buffer.decision_wait.0,
        std::time::Duration::from_secs(10)
    );
    assert_eq!(cfg.policies.len(), 1);
    assert!(
        cfg.warnings.iter().any(|w| w.contains(
            "read as an OpenTelemetry Collector config: the policies from processors.tail_sampling/errors; the brokers, topic, encoding of receivers.kafka; the output topic of exporters.kafka"
        )),
        "{:?}",
        cfg.warnings
    );
    // tailsift's own kafka section wins over what the Collector's components say.
    let own = format!("kafka: {{output_topic: sampled, group_id: ts}}\n{collector}");
    let cfg = Config::from_yaml(&own).expect("loads");
    assert_eq!(cfg.kafka.output_topic, "sampled");
    assert_eq!(cfg.kafka.group_id, "ts");
    let e = err(&collector.replace("tail_sampling/errors:", "filter:"));
    assert!(e.contains("tail_sampling"), "{e}");
}

/// The policy fingerprint changes with the policies and nothing else.
#[test]
fn the_policy_fingerprint_follows_the_policies_only() {
    let base = Config::from_yaml(MINIMAL).expect("valid");
    let other_kafka =
        Config::from_yaml(&MINIMAL.replace("localhost:9092", "elsewhere:9092")).expect("valid");
    let other_policy =
        Config::from_yaml(&MINIMAL.replace("name: all", "name: everything")).expect("valid");
    assert_eq!(base.policy_fingerprint().len(), 16);
    assert_eq!(base.policy_fingerprint(), other_kafka.policy_fingerprint());
    assert_ne!(base.policy_fingerprint(), other_policy.policy_fingerprint());
}
