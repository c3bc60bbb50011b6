//! The embedded Kafka-protocol broker: librdkafka's mock cluster, over real TCP.

use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;

/// A running embedded broker. It lives as long as this value.
pub struct EmbeddedBroker {
    cluster: MockCluster<'static, DefaultProducerContext>,
}

/// The embedded broker failed.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// librdkafka could not start the mock cluster or create a topic.
    #[error("embedded broker: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
}

impl EmbeddedBroker {
    /// Starts a cluster of `brokers` brokers on loopback ports.
    ///
    /// # Errors
    /// [`BrokerError`] when librdkafka cannot start it.
    pub fn start(brokers: i32) -> Result<Self, BrokerError> {
        Ok(EmbeddedBroker {
            cluster: MockCluster::new(brokers)?,
        })
    }

    /// Creates a topic with `partitions` partitions. Create topics explicitly: the
    /// mock cluster auto-creates unknown ones with only 4 partitions.
    ///
    /// # Errors
    /// [`BrokerError`] when the topic cannot be created.
    pub fn create_topic(&self, name: &str, partitions: i32) -> Result<(), BrokerError> {
        Ok(self.cluster.create_topic(name, partitions, 1)?)
    }

    /// `host:port,...` to give clients as `bootstrap.servers`.
    pub fn bootstrap_servers(&self) -> String {
        self.cluster.bootstrap_servers()
    }

    /// The underlying mock cluster, for fault injection in tests.
    pub fn cluster(&self) -> &MockCluster<'static, DefaultProducerContext> {
        &self.cluster
    }
}
