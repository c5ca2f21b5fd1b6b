//! Collects producer acknowledgements off the send path.
//!
//! Senders hand each record's `DeliveryFuture` to a task that awaits them in send order. A
//! `FuturesUnordered` of hundreds of thousands of deliveries costs more CPU in waker
//! bookkeeping than producing does; awaiting in order costs almost nothing, and since a
//! partition acknowledges in order and batches complete together, a record is observed at most
//! one batch round late (which slightly overstates latency, never understates it).

use std::time::Instant;

use hdrhistogram::Histogram;
use sluice_client::{ClientError, DeliveryFuture};
use tokio::sync::mpsc;

/// What the collector saw.
#[derive(Debug)]
pub struct AckTally {
    pub acked: u64,
    pub failed: u64,
    pub first_error: Option<ClientError>,
    /// Send → acknowledgement, µs.
    pub latency_us: Histogram<u64>,
}

/// Handle for queuing deliveries; `finish` waits for all of them.
#[derive(Debug)]
pub struct AckCollector {
    tx: mpsc::Sender<(DeliveryFuture, Instant)>,
    task: tokio::task::JoinHandle<AckTally>,
}

pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

impl AckCollector {
    /// `max_pending` bounds how many unacknowledged records may be queued; `on_ack` runs for
    /// every acknowledged record (progress counters).
    pub fn new(max_pending: usize, on_ack: impl Fn() + Send + 'static) -> Self {
        let (tx, mut rx) = mpsc::channel::<(DeliveryFuture, Instant)>(max_pending.max(1));
        let task = tokio::spawn(async move {
            let mut tally = AckTally {
                acked: 0,
                failed: 0,
                first_error: None,
                latency_us: histogram(),
            };
            while let Some((delivery, sent)) = rx.recv().await {
                match delivery.await {
                    Ok(_) => {
                        tally.acked += 1;
                        tally
                            .latency_us
                            .saturating_record(sent.elapsed().as_micros() as u64);
                        on_ack();
                    }
                    Err(e) => {
                        tally.failed += 1;
                        tally.first_error.get_or_insert(e);
                    }
                }
            }
            tally
        });
        AckCollector { tx, task }
    }

    /// Queues a delivery; waits while `max_pending` are outstanding.
    pub async fn push(&self, delivery: DeliveryFuture, sent: Instant) {
        // The receiver lives until `finish`, so this cannot fail.
        let _ = self.tx.send((delivery, sent)).await;
    }

    /// Waits for every queued delivery.
    pub async fn finish(self) -> AckTally {
        drop(self.tx);
        self.task.await.expect("ack collector task panicked")
    }
}
