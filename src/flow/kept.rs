//! A consumed message kept in librdkafka's memory, instead of copied out of it, for as
//! long as its payload is read: in the source, until the shards have copied its spans;
//! in the route stage, until its records are encoded.
//!
//! Copying each message out cost ~15% of the sampler's CPU on the Collector's batches
//! (the copy, and the kernel faulting in a fresh allocation for every ~4 MB message and
//! taking it back when freed). rdkafka hands a message out as a [`BorrowedMessage`]
//! whose lifetime is tied to a borrow of the consumer, so it cannot travel to the
//! scanner and shard tasks, or be the owner of a [`bytes::Bytes`], as it is. A [`Kept`]
//! holds the message together with a reference to the consumer, which keeps
//! librdkafka's handle alive for as long as the message is.
//!
//! What a message the source keeps pins in librdkafka: for compressed input, its
//! message set's decompressed buffer; for uncompressed input, the fetch response it
//! came in (up to `fetch.max.bytes`, the prefetch share of the memory limit). The
//! budget charges the payload's length while it is kept, as it charged the copy; the
//! source's input gate keeps the messages in flight to an eighth of the buffer's
//! share, read in order, so they pin at most the last responses read. The route stage
//! drops each message once its records are encoded.

use std::sync::Arc;

use rdkafka::consumer::{ConsumerContext, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Message};

/// A message and the consumer it came from, to be the owner of a `Bytes` of its
/// payload. The fields drop in order: the message first, then the consumer handle,
/// which may be the last.
pub(crate) struct Kept<C: ConsumerContext + 'static> {
    message: BorrowedMessage<'static>,
    _consumer: Arc<StreamConsumer<C>>,
}

impl<C: ConsumerContext + 'static> Kept<C> {
    /// Keeps `message`, read from `consumer`.
    ///
    /// # Safety
    ///
    /// `message` must have been read from `consumer` (the same librdkafka handle):
    /// it is that handle the `Kept` keeps alive for the message.
    pub(crate) unsafe fn new(
        message: BorrowedMessage<'_>,
        consumer: &Arc<StreamConsumer<C>>,
    ) -> Self {
        // SAFETY: a `BorrowedMessage`'s lifetime stands for the consumer it was read
        // from, which must outlive it: rdkafka frees the message's memory (its event)
        // when the message is dropped, through librdkafka's handle, which the consumer
        // owns. The message owns everything else it points to (`Arc<NativeEvent>`);
        // the lifetime is only a marker (`PhantomData`), so changing it changes no
        // layout. The consumer (the one it was read from, as the caller promises)
        // outlives the message because `Kept` holds an `Arc` of it, declared after the
        // message and so dropped after it, and `message` is private: no reference to
        // it escapes with the shorter lifetime's guarantee gone.
        let message = unsafe {
            std::mem::transmute::<BorrowedMessage<'_>, BorrowedMessage<'static>>(message)
        };
        Kept {
            message,
            _consumer: Arc::clone(consumer),
        }
    }
}

impl<C: ConsumerContext + 'static> AsRef<[u8]> for Kept<C> {
    fn as_ref(&self) -> &[u8] {
        self.message.payload().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use rdkafka::config::ClientConfig;
    use rdkafka::consumer::{Consumer, DefaultConsumerContext};
    use rdkafka::{Offset, TopicPartitionList};

    use super::*;
    use crate::demo::EmbeddedBroker;

    /// A kept payload stays readable, whole, on another thread, after every other
    /// handle of its consumer is gone; dropping it destroys the message and then
    /// closes the consumer, within 30 s (with the fields the other way round, the
    /// close waits for the message and never returns). Both
    /// compressions: lz4 payloads live in a decompressed message set, uncompressed
    /// ones in the fetch response.
    #[tokio::test]
    async fn a_kept_payload_outlives_every_other_handle_of_its_consumer() {
        let broker = EmbeddedBroker::start(1).expect("mock cluster");
        let bootstrap = broker.bootstrap_servers();
        for (topic, compression) in [("kept-lz4", "lz4"), ("kept-none", "none")] {
            broker.create_topic(topic, 1).expect("topic");
            let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
            let producer = crate::gen::producer(&bootstrap, compression).expect("producer");
            crate::gen::send(&producer, topic, b"k", &payload)
                .await
                .expect("sent");
            let consumer: StreamConsumer<DefaultConsumerContext> = ClientConfig::new()
                .set("bootstrap.servers", &bootstrap)
                .set("group.id", "kept")
                .create()
                .expect("consumer");
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(topic, 0, Offset::Beginning)
                .expect("partition");
            consumer.assign(&tpl).expect("assign");
            let consumer = Arc::new(consumer);
            let m = tokio::time::timeout(Duration::from_secs(20), consumer.recv())
                .await
                .expect("a message within 20 s")
                .expect("consumed");
            // SAFETY: `m` was read from `consumer` just above.
            let kept = Bytes::from_owner(unsafe { Kept::new(m, &consumer) });
            assert_eq!(
                Arc::strong_count(&consumer),
                2,
                "the kept message holds one"
            );
            drop(consumer);
            let elsewhere = kept.slice(1000..);
            let expected = payload.clone();
            std::thread::spawn(move || {
                assert!(elsewhere[..] == expected[1000..], "{compression}: intact");
            })
            .join()
            .expect("read on another thread");
            assert!(kept[..] == payload[..], "{compression}: intact");
            // The last drop destroys the message, then closes the consumer. In the
            // other order librdkafka's close waits for the message forever.
            assert!(
                crate::shutdown::drops_within(kept, Duration::from_secs(30)),
                "the consumer closed after its last message"
            );
        }
    }
}
