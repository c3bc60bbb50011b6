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
//! the prober's statistics (it keeps a connection to every broker) say which
//! brokers it has lost ([`BrokerStates`]). A partition is disturbed ([`PartitionReplicas::check`]) while
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
    /// Times it went from reachable to unreachable.
    downs: u64,
}

/// A broker as one probe saw it: unreachable now, and how many times it was lost.
///
/// Only the loss is an event: librdkafka connects only to the brokers it needs, so
/// a broker that came back as a follower may stay unconnected, and "not connected"
/// alone does not say it is down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BrokerView {
    /// Unreachable in the last report.
    pub down: bool,
    /// Times it went from reachable to unreachable.
    pub downs: u64,
}

impl BrokerStates {
    /// Takes one statistics report of a client connected to every broker.
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
            } else if seen.up_seen && !seen.down {
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
    /// What the progress watchdog says of a partition held by it.
    pub fn note(self) -> &'static str {
        match self {
            Disturbance::Offline => "partition outage (offline)",
            Disturbance::Moved => "partition outage (leader_or_isr_changed)",
            Disturbance::ReplicaUnreachable => "partition outage (replica_unreachable)",
        }
    }

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
    /// How many times each of its brokers had been lost then.
    downs: Vec<(i32, u64)>,
    /// Its brokers lost since the controller last changed its replicas, and not
    /// seen reachable since: while one is in sync, the leader may be waiting for it
    /// to move the high watermark.
    suspects: Vec<i32>,
    /// The partition's end offset when the first suspect was lost: once the end
    /// moves past it, the leader is no longer waiting for anyone.
    end_at_loss: Option<i64>,
}

impl PartitionReplicas {
    /// Compares a probe's view of the partition with the last one and keeps it.
    /// `now`: its replicas (`None`: the metadata read did not cover it, which
    /// proves nothing either way; the end-offset probe decides). Returns why the
    /// partition is to be treated as in an outage, if it is.
    ///
    /// A broker among its leader and in-sync replicas that was lost since the last
    /// probe holds the partition until it is seen reachable again, the controller
    /// changes the partition's replicas (drops it from the in-sync replicas, elects
    /// another leader), or the partition's end offset (`end`, the high watermark or
    /// last stable offset the probe read) moves: until then the leader may be
    /// waiting for it to acknowledge what producers sent. (A node that comes back
    /// as a follower may never be connected to again, and Kafka can keep a fenced
    /// node in the in-sync replicas it reports; the end moving is what proves the
    /// partition writable.) An unreachable leader holds it for as long as it is
    /// unreachable.
    pub fn check(
        &mut self,
        now: Option<&Replicas>,
        brokers: &HashMap<i32, BrokerView>,
        end: Option<i64>,
    ) -> Option<Disturbance> {
        let now = now?;
        let moved = self.replicas.as_ref().is_some_and(|before| before != now);
        let written = matches!((self.end_at_loss, end), (Some(at), Some(e)) if e > at);
        // The probe that sees the end move still counts: producers may still be
        // delivering what they held.
        let released = written && !self.suspects.is_empty();
        if moved || written {
            self.suspects.clear();
        }
        let nodes = std::iter::once(now.leader).chain(now.isr.iter().copied());
        let mut leader_down = false;
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
            if b.downs != before {
                if self.suspects.is_empty() {
                    self.end_at_loss = end;
                }
                if !self.suspects.contains(&node) {
                    self.suspects.push(node);
                }
            } else if !b.down {
                self.suspects.retain(|n| *n != node);
            }
            leader_down |= node == now.leader && b.down;
            downs.push((node, b.downs));
        }
        // Suspects no longer among its replicas hold nothing.
        self.suspects
            .retain(|n| *n == now.leader || now.isr.contains(n));
        if self.suspects.is_empty() {
            self.end_at_loss = None;
        }
        self.replicas = Some(now.clone());
        self.downs = downs;
        if now.leader < 0 {
            Some(Disturbance::Offline)
        } else if moved {
            Some(Disturbance::Moved)
        } else if leader_down || released || !self.suspects.is_empty() {
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
        s.observe_states([(2, "TRY_CONNECT")].into_iter());
        assert_eq!(
            s.view()[&2],
            BrokerView {
                down: true,
                downs: 1
            },
            "one loss, however many reports"
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
    /// watermark stands still until the controller drops it), the dead node back in
    /// sync but never reconnected to, the leader lost and back, the leader gone
    /// (offline) and a new one elected; quiet in between.
    #[test]
    fn a_partition_is_disturbed_by_its_own_replicas_only() {
        let up = |downs| BrokerView { down: false, downs };
        let down = |downs| BrokerView { down: true, downs };
        let mut p = PartitionReplicas::default();
        let mut brokers: HashMap<i32, BrokerView> = [(1, up(0)), (2, up(0)), (3, up(0))].into();
        assert_eq!(
            p.check(Some(&replicas(1, &[1, 2, 3])), &brokers, Some(100)),
            None
        );
        assert_eq!(
            p.check(None, &brokers, Some(100)),
            None,
            "no metadata proves nothing"
        );
        // Follower 3 dies; still in sync as far as the controller knows, for as
        // many probes as that lasts.
        brokers.insert(3, down(1));
        for _ in 0..3 {
            assert_eq!(
                p.check(Some(&replicas(1, &[1, 2, 3])), &brokers, Some(100)),
                Some(Disturbance::ReplicaUnreachable)
            );
        }
        // Dropped from the in-sync replicas.
        assert_eq!(
            p.check(Some(&replicas(1, &[1, 2])), &brokers, Some(100)),
            Some(Disturbance::Moved)
        );
        // No longer among them: its being down does not hold this partition.
        assert_eq!(
            p.check(Some(&replicas(1, &[1, 2])), &brokers, Some(100)),
            None
        );
        // Lost again; Kafka keeps it among the in-sync replicas it reports, and the
        // end does not move: held, until the end moves (the leader is writing
        // again), for that probe too.
        brokers.insert(3, down(2));
        for _ in 0..3 {
            assert_eq!(
                p.check(Some(&replicas(1, &[1, 2])), &brokers, Some(100)),
                None,
                "not among its replicas"
            );
        }
        let mut q = PartitionReplicas::default();
        let stay = replicas(1, &[1, 2, 3]);
        brokers.insert(3, up(2));
        assert_eq!(q.check(Some(&stay), &brokers, Some(100)), None);
        brokers.insert(3, down(3));
        for _ in 0..3 {
            assert_eq!(
                q.check(Some(&stay), &brokers, Some(100)),
                Some(Disturbance::ReplicaUnreachable)
            );
        }
        assert_eq!(
            q.check(Some(&stay), &brokers, Some(130)),
            Some(Disturbance::ReplicaUnreachable),
            "the probe that sees the end move"
        );
        assert_eq!(q.check(Some(&stay), &brokers, Some(130)), None);
        assert_eq!(q.check(Some(&stay), &brokers, Some(140)), None);
        // Back in sync; the consumer need not connect to a follower, so it is not
        // seen up: the controller's word is enough.
        assert_eq!(
            p.check(Some(&replicas(1, &[1, 2, 3])), &brokers, Some(100)),
            Some(Disturbance::Moved)
        );
        assert_eq!(
            p.check(Some(&replicas(1, &[1, 2, 3])), &brokers, Some(100)),
            None
        );
        // The leader is lost between two probes and back by the next one.
        brokers.insert(1, up(1));
        assert_eq!(
            p.check(Some(&replicas(1, &[1, 2, 3])), &brokers, Some(100)),
            Some(Disturbance::ReplicaUnreachable),
            "lost since the last probe, though up now"
        );
        assert_eq!(
            p.check(Some(&replicas(1, &[1, 2, 3])), &brokers, Some(100)),
            None
        );
        // The leader unreachable holds the partition as long as that lasts.
        brokers.insert(1, down(2));
        for _ in 0..3 {
            assert_eq!(
                p.check(Some(&replicas(1, &[1, 2, 3])), &brokers, Some(100)),
                Some(Disturbance::ReplicaUnreachable)
            );
        }
        assert_eq!(
            p.check(Some(&replicas(-1, &[2, 3])), &brokers, Some(100)),
            Some(Disturbance::Offline)
        );
        assert_eq!(
            p.check(Some(&replicas(2, &[2, 3])), &brokers, Some(100)),
            Some(Disturbance::Moved)
        );
        assert_eq!(
            p.check(Some(&replicas(2, &[2, 3])), &brokers, Some(100)),
            None
        );
    }
}
