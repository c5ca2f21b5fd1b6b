//! What the raft crate's cluster tests share.

use std::future::Future;
use std::time::{Duration, Instant};

/// Every wait in these tests is bounded by this.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// Polls `check` until it gives `Some`, or fails the test after [`DEADLINE`].
pub async fn wait_for<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
