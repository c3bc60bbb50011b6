//! Outages of one partition while the rest of the cluster is up.
//!
//! On a replicated cluster a single node's death stops some partitions and not
//! others. When it led a partition, the partition has no leader until the
//! controller elects one; when it was an in-sync follower, the leader cannot move
//! the partition's high watermark (what consumers may read, what the idle probe's
//! end offset reports) until the node is dropped from the in-sync replicas, seconds
//! later. Either way producers hold or cannot complete their records meanwhile, and
//! the partition looks read to its end and idle. An idle probe that only asked for
//! the end offset would let its stream time follow the wall clock and decide its
//! traces before the held records arrive.
//!
//! So each idle probe also reads the partitions' leaders and in-sync replicas, and
//! the consumer's statistics say which brokers it has lost its connection to
//! ([`BrokerStates`]). A partition is disturbed ([`PartitionReplicas::check`]) while
//! it has no leader, when its leader or in-sync replicas changed since the last
//! probe, or when a broker among them is unreachable or was since the last probe.
//! The source then treats that partition's probe as failed: its stream time stands
//! still, and its next idle streak lasts `idle_delay_after_outage`, as after a
//! whole-cluster outage.

use std::collections::HashMap;
use std::sync::Mutex;

use rdkafka::statistics::Statistics;

/// What the consumer's statistics said of each broker: reachable or not, and how
/// many statistics reports found it unreachable so far.
#[derive(Debug, Default)]
pub struct BrokerStates {
    by_node: Mutex<HashMap<i32, BrokerSeen>>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct BrokerSeen {
    /// The connection was up at least once: a broker never connected to (librdkafka
    /// connects only to the brokers it needs) is not known to be down.
    up_seen: bool,
    /// Unreachable in the last report.
    down: bool,
    /// Reports that found it unreachable.
    downs: u64,
}

/// A broker as one probe saw it: unreachable now, and the number of reports that
/// found it unreachable so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BrokerView {
    /// Unreachable in the last report.
    pub down: bool,
    /// Reports that found it unreachable.
    pub downs: u64,
}

impl BrokerStates {
    /// Takes one statistics report of the consumer.
    pub fn observe(&self, stats: &Statistics) {
        self.observe_states(
            stats
                .brokers
                .values()
                .filter(|b| b.nodeid >= 0)
                .map(|b| (b.nodeid, b.state.as_str())),
        );
    }

    /// Takes each broker's connection state (librdkafka's names: `UP`, `DOWN`,
    /// `CONNECT`, `INIT`, ...).
    fn observe_states<'a>(&self, states: impl Iterator<Item = (i32, &'a str)>) {
        let mut by_node = self
            .by_node
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (node, state) in states {
            let seen = by_node.entry(node).or_default();
            if state == "UP" {
                seen.up_seen = true;
                seen.down = false;
            } else if seen.up_seen {
                seen.down = true;
                seen.downs += 1;
            }
        }
    }

    /// Every broker known, as of now.
    pub fn view(&self) -> HashMap<i32, BrokerView> {
        self.by_node
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|(node, s)| {
                (
                    *node,
                    BrokerView {
                        down: s.down,
                        downs: s.downs,
                    },
                )
            })
            .collect()
    }
}

/// A partition's leader and in-sync replicas from a metadata read (`leader` -1:
/// none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replicas {
    /// The leader's broker id, -1 while the partition has none.
    pub leader: i32,
    /// The in-sync replicas' broker ids, sorted.
    pub isr: Vec<i32>,
}

/// Why a partition counts as in an outage at a probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disturbance {
    /// The partition has no leader.
    Offline,
    /// Its leader or in-sync replicas changed since the last probe.
    Moved,
    /// A broker among its leader and in-sync replicas is unreachable, or was since
    /// the last probe.
    ReplicaUnreachable,
}

impl Disturbance {
    /// The metric label and log word.
    pub fn as_str(self) -> &'static str {
        match self {
            Disturbance::Offline => "offline",
            Disturbance::Moved => "leader_or_isr_changed",
            Disturbance::ReplicaUnreachable => "replica_unreachable",
        }
    }
}

/// What the last probe saw of one partition.
#[derive(Debug, Default, Clone)]
pub struct PartitionReplicas {
    replicas: Option<Replicas>,
    /// The report counts of its brokers then.
    downs: Vec<(i32, u64)>,
}

impl PartitionReplicas {
    /// Compares a probe's view of the partition with the last one and keeps it.
    /// `now`: its replicas (`None`: the metadata read did not cover it, which
    /// proves nothing either way; the end-offset probe decides). Returns why the
    /// partition is to be treated as in an outage, if it is.
    pub fn check(
        &mut self,
        now: Option<&Replicas>,
        brokers: &HashMap<i32, BrokerView>,
    ) -> Option<Disturbance> {
        let now = now?;
        let moved = self.replicas.as_ref().is_some_and(|before| before != now);
        let nodes = std::iter::once(now.leader).chain(now.isr.iter().copied());
        let mut unreachable = false;
        let mut downs = Vec::with_capacity(now.isr.len() + 1);
        for node in nodes.filter(|n| *n >= 0) {
            let Some(b) = brokers.get(&node) else {
                continue;
            };
            let before = self
                .downs
                .iter()
                .find(|(n, _)| *n == node)
                .map_or(b.downs, |(_, d)| *d);
            unreachable |= b.down || b.downs != before;
            downs.push((node, b.downs));
        }
        self.replicas = Some(now.clone());
        self.downs = downs;
        if now.leader < 0 {
            Some(Disturbance::Offline)
        } else if moved {
            Some(Disturbance::Moved)
        } else if unreachable {
            Some(Disturbance::ReplicaUnreachable)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replicas(leader: i32, isr: &[i32]) -> Replicas {
        Replicas {
            leader,
            isr: isr.to_vec(),
        }
    }

    #[test]
    fn a_broker_is_down_only_once_it_was_up() {
        let s = BrokerStates::default();
        s.observe_states([(1, "INIT"), (2, "UP")].into_iter());
        let v = s.view();
        assert!(!v[&1].down, "never connected: not known down");
        assert!(!v[&2].down);
        s.observe_states([(1, "CONNECT"), (2, "DOWN")].into_iter());
        let v = s.view();
        assert!(!v[&1].down);
        assert_eq!(
            v[&2],
            BrokerView {
                down: true,
                downs: 1
            }
        );
        s.observe_states([(2, "UP")].into_iter());
        assert_eq!(
            s.view()[&2],
            BrokerView {
                down: false,
                downs: 1
            }
        );
    }

    /// The cases a node death makes: an in-sync follower unreachable (the high
    /// watermark stands still), the leader gone (offline), a new leader, and the
    /// follower dropped from the in-sync replicas; then quiet again.
    #[test]
    fn a_partition_is_disturbed_by_its_own_replicas_only() {
        let up = |downs| BrokerView { down: false, downs };
        let down = |downs| BrokerView { down: true, downs };
        let mut p = PartitionReplicas::default();
        let mut brokers: HashMap<i32, BrokerView> = [(1, up(0)), (2, up(0)), (3, up(0))].into();
        assert_eq!(p.check(Some(&replicas(1, &[1, 2, 3])), &brokers), None);
        assert_eq!(p.check(None, &brokers), None, "no metadata proves nothing");
        // Follower 3 dies; still in sync as far as the controller knows.
        brokers.insert(3, down(1));
        assert_eq!(
            p.check(Some(&replicas(1, &[1, 2, 3])), &brokers),
            Some(Disturbance::ReplicaUnreachable)
        );
        // Dropped from the in-sync replicas.
        assert_eq!(
            p.check(Some(&replicas(1, &[1, 2])), &brokers),
            Some(Disturbance::Moved)
        );
        // No longer among them: its being down does not hold this partition.
        brokers.insert(3, down(5));
        assert_eq!(p.check(Some(&replicas(1, &[1, 2])), &brokers), None);
        // The leader dies between two probes and is back by the next one.
        brokers.insert(1, up(1));
        assert_eq!(
            p.check(Some(&replicas(1, &[1, 2])), &brokers),
            Some(Disturbance::ReplicaUnreachable),
            "down since the last probe, though up now"
        );
        assert_eq!(p.check(Some(&replicas(1, &[1, 2])), &brokers), None);
        assert_eq!(
            p.check(Some(&replicas(-1, &[2])), &brokers),
            Some(Disturbance::Offline)
        );
        assert_eq!(
            p.check(Some(&replicas(2, &[2])), &brokers),
            Some(Disturbance::Moved)
        );
        assert_eq!(p.check(Some(&replicas(2, &[2])), &brokers), None);
    }
}
