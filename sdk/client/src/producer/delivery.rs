//! A batch's outcome, shared by the delivery futures of its records.
//!
//! A record's [`DeliveryFuture`] is its batch's [`BatchDone`] and its place in the batch: no
//! channel per record. The driver completes a batch once ([`BatchDone::complete`]), which
//! wakes whoever waits on any of its records; each future then reads its own offset and
//! timestamp from the shared outcome. A batch dropped without an outcome (the driver stopped,
//! its runtime shut down) completes its records with [`ClientError::Closed`].

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll, Waker};

use sluice_proto::RoutedRecord;

use super::RecordMetadata;
use super::accumulator::BatchWaiter;
use crate::ClientError;

/// Where a batch's records were stored.
#[derive(Debug)]
pub(crate) enum Placed {
    /// One partition, from this base offset.
    From(u64),
    /// The topic's partitioner placed each record (one entry per record, in order).
    Routed(Vec<RoutedRecord>),
    /// Not said (`acks=0`).
    Unknown,
}

#[derive(Debug)]
enum Outcome {
    Stored {
        topic: Arc<str>,
        partition: u32,
        placed: Placed,
        timestamps: Vec<i64>,
    },
    Failed(ClientError),
}

impl Outcome {
    fn record(&self, index: usize) -> Result<RecordMetadata, ClientError> {
        match self {
            Outcome::Stored {
                topic,
                partition,
                placed,
                timestamps,
            } => {
                let (partition, offset) = match placed {
                    Placed::From(base) => (*partition, base + index as u64),
                    Placed::Routed(placed) => placed
                        .get(index)
                        .map_or((*partition, RecordMetadata::UNKNOWN_OFFSET), |p| {
                            (p.partition, p.offset)
                        }),
                    Placed::Unknown => (*partition, RecordMetadata::UNKNOWN_OFFSET),
                };
                Ok(RecordMetadata {
                    topic: topic.clone(),
                    partition,
                    offset,
                    timestamp: timestamps.get(index).copied().unwrap_or_default(),
                })
            }
            Outcome::Failed(e) => Err(e.clone()),
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct Shared {
    outcome: OnceLock<Outcome>,
    /// Tasks waiting on records of the batch.
    wakers: Mutex<Vec<Waker>>,
}

impl Shared {
    fn set(&self, outcome: Outcome) {
        if self.outcome.set(outcome).is_ok() {
            let wakers =
                std::mem::take(&mut *self.wakers.lock().unwrap_or_else(|p| p.into_inner()));
            for w in wakers {
                w.wake();
            }
        }
    }
}

/// The driver's side of a batch's outcome (one per batch, kept with it in the accumulator).
#[derive(Debug, Default)]
pub(crate) struct BatchDone(Arc<Shared>);

impl BatchDone {
    /// The batch was stored; `timestamps` are its records', in order.
    pub(crate) fn stored(
        &self,
        topic: Arc<str>,
        partition: u32,
        placed: Placed,
        timestamps: Vec<i64>,
    ) {
        self.0.set(Outcome::Stored {
            topic,
            partition,
            placed,
            timestamps,
        });
    }

    /// The batch failed for good: every record fails with `e`.
    pub(crate) fn failed(&self, e: ClientError) {
        self.0.set(Outcome::Failed(e));
    }
}

impl Drop for BatchDone {
    fn drop(&mut self) {
        self.0.set(Outcome::Failed(ClientError::Closed));
    }
}

impl BatchWaiter for BatchDone {
    type Ticket = DeliveryFuture;
    fn ticket(&self, index: usize) -> DeliveryFuture {
        DeliveryFuture {
            batch: self.0.clone(),
            index,
        }
    }
}

/// Resolves when the record's batch is acknowledged (or, under [`Acks::None`], written), or
/// fails for good.
///
/// [`Acks::None`]: sluice_proto::Acks::None
#[derive(Debug)]
pub struct DeliveryFuture {
    batch: Arc<Shared>,
    index: usize,
}

impl Future for DeliveryFuture {
    type Output = Result<RecordMetadata, ClientError>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Some(outcome) = self.batch.outcome.get() {
            return Poll::Ready(outcome.record(self.index));
        }
        let mut wakers = self.batch.wakers.lock().unwrap_or_else(|p| p.into_inner());
        // Set while the lock was awaited: `set` takes the wakers after setting the outcome.
        if let Some(outcome) = self.batch.outcome.get() {
            return Poll::Ready(outcome.record(self.index));
        }
        if !wakers.iter().any(|w| w.will_wake(cx.waker())) {
            wakers.push(cx.waker().clone());
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(offset: u64) -> RecordMetadata {
        RecordMetadata {
            topic: Arc::from("t"),
            partition: 2,
            offset,
            timestamp: 10 + offset as i64 - 100,
        }
    }

    #[tokio::test]
    async fn every_record_of_a_batch_gets_its_own_offset_wherever_it_is_awaited() {
        let done = BatchDone::default();
        // Awaited on tasks of their own before the outcome exists, and one after it.
        let waiting: Vec<_> = (0..3).map(|i| tokio::spawn(done.ticket(i))).collect();
        let late = done.ticket(3);
        tokio::task::yield_now().await;
        done.stored(Arc::from("t"), 2, Placed::From(100), vec![10, 11, 12, 13]);
        for (i, task) in waiting.into_iter().enumerate() {
            assert_eq!(task.await.unwrap().unwrap(), record(100 + i as u64));
        }
        assert_eq!(late.await.unwrap(), record(103));
    }

    #[tokio::test]
    async fn a_failed_batch_fails_each_record_and_a_dropped_one_reports_closed() {
        let done = BatchDone::default();
        let first = tokio::spawn(done.ticket(0));
        let second = done.ticket(1);
        tokio::task::yield_now().await;
        done.failed(ClientError::Timeout);
        assert!(matches!(first.await.unwrap(), Err(ClientError::Timeout)));
        assert!(matches!(second.await, Err(ClientError::Timeout)));

        let done = BatchDone::default();
        let waiting = tokio::spawn(done.ticket(0));
        tokio::task::yield_now().await;
        drop(done);
        assert!(matches!(waiting.await.unwrap(), Err(ClientError::Closed)));
    }

    #[tokio::test]
    async fn records_placed_by_the_partitioner_get_their_own_partitions() {
        let done = BatchDone::default();
        let (a, b) = (done.ticket(0), done.ticket(1));
        done.stored(
            Arc::from("t"),
            u32::MAX,
            Placed::Routed(vec![
                RoutedRecord {
                    partition: 4,
                    offset: 7,
                },
                RoutedRecord {
                    partition: 1,
                    offset: 3,
                },
            ]),
            vec![5, 6],
        );
        let (a, b) = (a.await.unwrap(), b.await.unwrap());
        assert_eq!((a.partition, a.offset, a.timestamp), (4, 7, 5));
        assert_eq!((b.partition, b.offset, b.timestamp), (1, 3, 6));
    }
}
