//! Creating the topics tailsift writes, when the broker lacks them and
//! `kafka.create_missing_topics` is on (brokers such as tansu create none on first use).

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::KafkaError;
use tracing::info;

use crate::config::KafkaConfig;

/// Why the topics could not be made ready.
#[derive(Debug, thiserror::Error)]
pub enum TopicError {
    /// The admin client could not be created or the broker not asked.
    #[error("cannot read or create topics: {0}")]
    Admin(#[from] rdkafka::error::KafkaError),
    /// The broker refused to create a topic.
    #[error("cannot create topic `{topic}`: {why}")]
    Create {
        /// The topic.
        topic: String,
        /// The broker's answer.
        why: String,
    },
}

/// An admin client with tailsift's producer settings (TLS, SASL, ...).
fn admin(cfg: &KafkaConfig) -> Result<AdminClient<DefaultClientContext>, TopicError> {
    Ok(crate::kafka::clients::admin(cfg).create()?)
}

/// Every topic the broker has, with its partition count (asked for all topics: asking
/// for one by name may create it on brokers that auto-create). The metadata request
/// blocks, so it runs on the blocking pool; the client comes back with the answer.
async fn partitions(
    admin: AdminClient<DefaultClientContext>,
    timeout: Duration,
) -> Result<(AdminClient<DefaultClientContext>, HashMap<String, i32>), TopicError> {
    tokio::task::spawn_blocking(move || {
        let md = admin.inner().fetch_metadata(None, timeout)?;
        let topics = md
            .topics()
            .iter()
            .filter(|t| t.error().is_none())
            .map(|t| (t.name().to_string(), t.partitions().len() as i32))
            .collect();
        Ok((admin, topics))
    })
    .await
    .unwrap_or(Err(TopicError::Admin(KafkaError::Canceled)))
}

/// Those of `topics` the broker does not have (none if it cannot be asked: the
/// pipeline's own clients will report an unreachable broker).
pub async fn missing(cfg: &KafkaConfig, topics: &[(String, bool)]) -> Vec<String> {
    let Ok(admin) = admin(cfg) else {
        return Vec::new();
    };
    let Ok((_, have)) = partitions(admin, Duration::from_secs(3)).await else {
        return Vec::new();
    };
    topics
        .iter()
        .filter(|(t, _)| !have.contains_key(t))
        .map(|(t, _)| t.clone())
        .collect()
}

/// Creates those of `topics` the broker does not have: as many partitions as the first
/// input topic (1 if it has none yet), `compacted` ones with
/// `cleanup.policy=compact,delete`.
/// Returns the topics created.
///
/// # Errors
/// [`TopicError`] when the broker cannot be asked or refuses.
pub async fn create_missing(
    cfg: &KafkaConfig,
    topics: &[(String, bool)],
) -> Result<Vec<String>, TopicError> {
    let (admin, have) = partitions(admin(cfg)?, Duration::from_secs(10)).await?;
    let partitions = cfg
        .input_topics
        .first()
        .and_then(|t| have.get(t).copied())
        .filter(|&n| n > 0)
        .unwrap_or(1);
    let missing: Vec<&(String, bool)> = topics
        .iter()
        .filter(|(t, _)| !have.contains_key(t))
        .collect();
    if missing.is_empty() {
        return Ok(Vec::new());
    }
    let new: Vec<NewTopic<'_>> = missing
        .iter()
        .map(|(t, compacted)| {
            let topic = NewTopic::new(
                t,
                partitions,
                TopicReplication::Fixed(cfg.replication_factor),
            );
            if *compacted {
                // Keyed by unique trace ids, compaction alone never shrinks it;
                // deletion by age (the broker's retention.ms) bounds it.
                topic.set("cleanup.policy", "compact,delete")
            } else {
                topic
            }
        })
        .collect();
    let options = AdminOptions::new()
        .request_timeout(Some(Duration::from_secs(15)))
        .operation_timeout(Some(Duration::from_secs(15)));
    let results = admin.create_topics(&new, &options).await.map_err(|e| {
        let names: Vec<&str> = missing.iter().map(|(t, _)| t.as_str()).collect();
        TopicError::Create {
            topic: names.join(", "),
            why: format!(
                "{e} (a broker without the CreateTopics API, such as librdkafka's mock cluster, never answers: create them by hand)"
            ),
        }
    })?;
    let mut created = Vec::new();
    for r in results {
        match r {
            Ok(t) => {
                info!(message = "Created missing topic.", topic = %t, partitions);
                created.push(t);
            }
            Err((t, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {
                created.push(t);
            }
            Err((topic, code)) => {
                return Err(TopicError::Create {
                    topic,
                    why: code.to_string(),
                })
            }
        }
    }
    Ok(created)
}

/// What is wrong with the decisions topic's retention for `kafka.decisions_window`:
/// one sentence per problem, naming the topic setting, its value and what is
/// expected (none: fine, or the topic or its settings cannot be read, which the
/// pipeline's clients report their own way).
///
/// A compacted topic keyed by unique trace ids never shrinks by compaction: without
/// `delete` in its `cleanup.policy` it grows with all traffic ever. A `retention.ms`
/// shorter than the window deletes decisions a partition's next owner reads back.
pub async fn decisions_retention_problems(cfg: &KafkaConfig) -> Vec<String> {
    use rdkafka::admin::ResourceSpecifier;
    let Some(topic) = &cfg.decisions_topic else {
        return Vec::new();
    };
    let Ok(admin) = admin(cfg) else {
        return Vec::new();
    };
    let options = AdminOptions::new().request_timeout(Some(Duration::from_secs(10)));
    let Ok(results) = admin
        .describe_configs(&[ResourceSpecifier::Topic(topic)], &options)
        .await
    else {
        return Vec::new();
    };
    let Some(Ok(resource)) = results.into_iter().next() else {
        return Vec::new();
    };
    let value = |name: &str| resource.get(name).and_then(|e| e.value.clone());
    retention_problems(
        topic,
        value("cleanup.policy").as_deref(),
        value("retention.ms").and_then(|v| v.parse::<i64>().ok()),
        cfg.decisions_window.0,
    )
}

/// [`decisions_retention_problems`] on the values read.
fn retention_problems(
    topic: &str,
    policy: Option<&str>,
    retention_ms: Option<i64>,
    window: Duration,
) -> Vec<String> {
    let mut problems = Vec::new();
    let policies: Vec<&str> = policy.unwrap_or("").split(',').map(str::trim).collect();
    if !policies.contains(&"delete") {
        problems.push(format!(
            "decisions topic `{topic}` has cleanup.policy={:?}; expected `compact,delete`: keyed by unique trace ids it never shrinks by compaction alone",
            policy.unwrap_or("")
        ));
    }
    if let Some(ms) = retention_ms.filter(|&ms| ms >= 0) {
        if (ms as u128) < window.as_millis() {
            problems.push(format!(
                "decisions topic `{topic}` has retention.ms={ms}; expected at least kafka.decisions_window ({} ms) plus the longest consumer lag: decisions read back would be deleted first",
                window.as_millis()
            ));
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::retention_problems;
    use std::time::Duration;

    #[test]
    fn a_decisions_topic_must_delete_by_age_and_keep_the_window() {
        let w = Duration::from_secs(600);
        assert!(retention_problems("d", Some("compact,delete"), Some(604_800_000), w).is_empty());
        assert!(retention_problems("d", Some("delete, compact"), Some(-1), w).is_empty());
        let p = retention_problems("d", Some("compact"), Some(604_800_000), w);
        assert_eq!(p.len(), 1);
        assert!(
            p[0].contains("cleanup.policy") && p[0].contains("compact,delete"),
            "{p:?}"
        );
        let p = retention_problems("d", Some("compact,delete"), Some(60_000), w);
        assert_eq!(p.len(), 1);
        assert!(
            p[0].contains("retention.ms=60000") && p[0].contains("600000"),
            "{p:?}"
        );
    }
}
