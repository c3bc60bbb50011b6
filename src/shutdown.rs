//! Shutdown signalling: one [`ShutdownTrigger`], any number of [`Shutdown`] listeners;
//! and [`leave_group`], how a stage's consumer leaves its group at the end.

use std::time::Duration;

use rdkafka::consumer::{Consumer, ConsumerContext, StreamConsumer};
use tokio::sync::watch;

/// Fires shutdown for every [`Shutdown`] made from it.
#[derive(Debug)]
pub struct ShutdownTrigger(watch::Sender<bool>);

/// Resolves when shutdown has been triggered (or the trigger dropped).
#[derive(Debug, Clone)]
pub struct Shutdown(watch::Receiver<bool>);

impl ShutdownTrigger {
    /// A new trigger.
    pub fn new() -> Self {
        ShutdownTrigger(watch::channel(false).0)
    }

    /// A listener.
    pub fn subscribe(&self) -> Shutdown {
        Shutdown(self.0.subscribe())
    }

    /// Signals every listener.
    pub fn trigger(&self) {
        self.0.send_replace(true);
    }
}

impl Default for ShutdownTrigger {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    /// Waits for shutdown. Returns immediately if it already happened.
    pub async fn recv(&mut self) {
        // An error means the trigger is gone, which also means shut down.
        let _ = self.0.wait_for(|v| *v).await;
    }
}

/// How long a stage's consumer may take to leave its group at the end: the revoke
/// callbacks commit what is safe, which a reachable broker does in milliseconds.
pub const LEAVE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long [`leave_group`] waits in one read before it looks at the assignment again.
const LEAVE_POLL: Duration = Duration::from_millis(20);

/// Unsubscribes `consumer` and handles the revoke that starts while the consumer is
/// still open, reading until it owns no partition (at most `within`). Messages read
/// meanwhile are dropped unhandled: nothing of them was committed, so the next owner
/// reads them again.
///
/// Why: rdkafka's `BaseConsumer::drop` closes the consumer and polls until it is
/// closed, handling any rebalance event that arrives meanwhile with the context's
/// `rebalance`, which first asks librdkafka for the group's rebalance protocol. Once the
/// consumer is closing, librdkafka may never answer (librdkafka #4041, rust-rdkafka
/// #509), and the drop waits forever. `tests/group.rs` (1 -> 3 -> 1 instances) hung so
/// once: an instance stopped during the rebalance another's leaving had started, and
/// the revoke reached its consumer's drop.
///
/// A static member (`group.instance.id`) only unsubscribes, as before: it keeps its
/// partitions across a restart within its session, and reading on after the
/// unsubscribe made the group rebalance (`tests/real_kafka.rs`,
/// `a_static_member_restarted_within_its_session_keeps_its_partitions`, on Apache
/// Kafka); its drop keeps the upstream risk above.
pub async fn leave_group<C: ConsumerContext + 'static>(
    consumer: &StreamConsumer<C>,
    static_member: bool,
    within: Duration,
) {
    consumer.unsubscribe();
    if static_member {
        return;
    }
    let deadline = tokio::time::Instant::now() + within;
    // The revoke is handled inside `recv`, which then goes on waiting for a message
    // that no longer comes: each wait is short, so the loop sees the empty assignment.
    while consumer.assignment().is_ok_and(|a| a.count() > 0) {
        let now = tokio::time::Instant::now();
        if now >= deadline {
            break;
        }
        let _ = tokio::time::timeout_at(deadline.min(now + LEAVE_POLL), consumer.recv()).await;
    }
}

/// Drops `value` on a thread of its own and says whether the drop returned within
/// `within` (a consumer's drop can wait forever on librdkafka): for tests.
#[cfg(test)]
pub(crate) fn drops_within<T: Send + 'static>(value: T, within: Duration) -> bool {
    let (done, dropped) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        drop(value);
        let _ = done.send(());
    });
    dropped.recv_timeout(within).is_ok()
}

#[cfg(test)]
mod tests {
    use rdkafka::config::ClientConfig;
    use rdkafka::consumer::DefaultConsumerContext;

    use super::*;
    use crate::demo::EmbeddedBroker;

    /// Once `leave_group` returns, the consumer owns nothing (the revoke ran while it
    /// was open, so its drop has no rebalance left to handle) and dropping it returns.
    /// Unsubscribing alone leaves the assignment in place until the next poll. And it
    /// returns as soon as that is so, not at its deadline.
    #[tokio::test]
    async fn a_consumer_that_left_its_group_owns_nothing_and_closes() {
        let broker = EmbeddedBroker::start(1).expect("mock cluster");
        broker.create_topic("leave", 4).expect("topic");
        let consumer: StreamConsumer<DefaultConsumerContext> = ClientConfig::new()
            .set("bootstrap.servers", broker.bootstrap_servers())
            .set("group.id", "leave")
            .set("partition.assignment.strategy", "cooperative-sticky")
            .create()
            .expect("consumer");
        consumer.subscribe(&["leave"]).expect("subscribe");
        let assigned = tokio::time::timeout(Duration::from_secs(30), async {
            while consumer.assignment().map_or(0, |a| a.count()) < 4 {
                let _ = tokio::time::timeout(Duration::from_millis(100), consumer.recv()).await;
            }
        })
        .await;
        assert!(assigned.is_ok(), "4 partitions assigned within 30 s");
        // It returns once nothing is assigned, not at its deadline (each shutdown waited
        // out the whole LEAVE_TIMEOUT so once: the revoke is handled inside a `recv`
        // that then waits for a message no longer coming).
        let left = tokio::time::timeout(
            Duration::from_secs(30),
            leave_group(&consumer, false, Duration::from_secs(120)),
        )
        .await;
        assert!(
            left.is_ok(),
            "leave_group returned once nothing was assigned, not at its 120 s deadline"
        );
        assert_eq!(
            consumer.assignment().map(|a| a.count()).ok(),
            Some(0),
            "the revoke ran before leave_group returned"
        );
        assert!(
            drops_within(consumer, Duration::from_secs(30)),
            "the consumer closed"
        );
    }
}
