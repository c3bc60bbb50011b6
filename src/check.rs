//! What `tailsift check` prints: a config as the sampler will run it, with defaults
//! filled in and the policy tree in evaluation order. Presentation only; the checks
//! themselves are the config's and the policies' own.

use std::fmt::Write as _;
use std::path::Path;

use crate::config::Config;
use crate::policy::{PolicyConfig, PolicySet, PolicySpec};

/// The report for a config that loaded, validated and built (`set`), one line per
/// item, each ending in a newline.
pub fn report(path: &Path, cfg: &Config, set: &PolicySet) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "config {} is valid", path.display());
    for w in &cfg.warnings {
        let _ = writeln!(out, "warning: {w}");
    }
    let _ = writeln!(
        out,
        "input {:?} -> output {} (dead letters: {}; decisions: {}), group {}",
        cfg.kafka.input_topics,
        cfg.kafka.output_topic,
        cfg.kafka.dead_letter_topic,
        cfg.kafka
            .decisions_topic
            .as_deref()
            .unwrap_or("in memory only"),
        cfg.kafka.group_id
    );
    let _ = writeln!(
        out,
        "decision_wait {}, after root {}, {} shards",
        cfg.buffer.decision_wait,
        cfg.buffer
            .decision_wait_after_root_received
            .map_or("off".to_string(), |d| d.to_string()),
        cfg.shard_count()
    );
    let _ = writeln!(
        out,
        "policies, in order (OTel precedence: a drop wins, then an inverted match vetoes, then any sample keeps and the first sampler names the trace, then an inverted sample keeps unless a policy voted not to){}:",
        if cfg.sample_on_first_match {
            "; evaluation stops at the first sample (sample_on_first_match)"
        } else {
            ""
        }
    );
    out.push_str(&policy_tree(&cfg.policies, 2));
    let _ = writeln!(
        out,
        "kept spans annotated with policy and probability: {}",
        if cfg.annotate { "yes" } else { "no" }
    );
    let _ = writeln!(
        out,
        "attribute predicates tested while scanning: {}",
        set.keys.len()
    );
    out
}

/// The policies as `check` prints them, indented by `indent`: name, type and block
/// with defaults filled in, one line each, sub-policies indented below their parent.
pub fn policy_tree(policies: &[PolicyConfig], indent: usize) -> String {
    let mut out = String::new();
    for p in policies {
        describe(p, indent, &mut out);
    }
    out
}

fn describe(p: &PolicyConfig, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    let ty = p.kind().as_str();
    let _ = write!(out, "{pad}- {} [{ty}]", p.name);
    if let Some(t) = &p.topic {
        let _ = write!(out, " -> topic {t}");
    }
    let subs: Option<(Vec<&PolicyConfig>, String)> = match &p.spec {
        PolicySpec::And(a) => Some((a.and_sub_policy.iter().collect(), "all of".into())),
        PolicySpec::Drop(d) => Some((
            d.drop_sub_policy.iter().collect(),
            "drops a trace when all of".into(),
        )),
        PolicySpec::Not(n) => Some((vec![&*n.not_sub_policy], "none of".into())),
        PolicySpec::Composite(c) => {
            let with_shares = c.with_shares();
            let each: Vec<String> = with_shares
                .iter()
                .map(|(p, s)| format!("{} {s}", p.name))
                .collect();
            Some((
                with_shares.into_iter().map(|(p, _)| p).collect(),
                format!(
                    "the first of, within {} spans/s (spans/s each: {})",
                    c.max_total_spans_per_second,
                    each.join(", ")
                ),
            ))
        }
        _ => None,
    };
    if let Some((subs, what)) = subs {
        let _ = writeln!(out, " {what}:");
        for sub in subs {
            describe(sub, indent + 4, out);
        }
        return;
    }
    // The block as written back in the OTel shape, defaults filled in.
    let block = serde_json::to_value(p)
        .ok()
        .and_then(|v| v.get(ty).cloned());
    match block {
        Some(b) => {
            let _ = writeln!(out, " {b}");
        }
        None => out.push('\n'),
    }
}
