//! Quotas: each principal's produce bytes, fetch bytes and requests per second, per broker,
//! enforced the way Kafka does — by holding its answers back, never by dropping requests.
//!
//! Each limit is a clock of virtual time ([`RateClock`]): every request moves it on by what it
//! cost at the quota's rate, from now or from where it stood if that is later. An answer waits
//! until the clock is at most [`BURST`] ahead of now, so traffic at or under the quota is never
//! held back and traffic over it is spaced out to the quota; the wait is returned to the
//! client as the throttle time. One principal's clocks never hold back another's.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sluice_metadata::MetadataCommand;
use sluice_proto::auth::Quota;
use sluice_proto::{ErrorCode, Request, ResponseBody, WireError};

use crate::Broker;
use crate::wire_error::propose_error;

/// How far ahead of now a principal's traffic may run before its answers wait: a burst of
/// this long at the quota's rate passes unthrottled.
pub(crate) const BURST: Duration = Duration::from_millis(50);
/// The longest one answer is held back (one request far over the quota, such as a large batch
/// under a small byte quota, is not held past the client's request timeout).
pub(crate) const MAX_THROTTLE: Duration = Duration::from_secs(10);

/// Virtual time for one limit.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RateClock {
    paid_until: Option<Instant>,
}

impl RateClock {
    /// Charges `amount` (bytes or requests) at `rate` per second at `now`; returns how long
    /// the answer waits.
    pub(crate) fn charge(&mut self, now: Instant, amount: u64, rate: u64) -> Duration {
        let from = self.paid_until.filter(|t| *t > now).unwrap_or(now);
        let cost = Duration::from_secs_f64(amount as f64 / rate.max(1) as f64);
        // Debt beyond what one answer can be held for is forgiven: one huge request must not
        // hold back the principal's answers for long after.
        let until = (from + cost.min(MAX_THROTTLE + BURST)).min(now + MAX_THROTTLE + BURST);
        self.paid_until = Some(until);
        until.saturating_duration_since(now).saturating_sub(BURST)
    }
}

/// What a request costs against a quota.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Usage {
    pub(crate) produce_bytes: u64,
    pub(crate) fetch_bytes: u64,
}

#[derive(Debug, Default)]
struct Clocks {
    /// The quota the clocks ran under: a changed quota starts them afresh.
    quota: Quota,
    produce: RateClock,
    fetch: RateClock,
    requests: RateClock,
}

impl Clocks {
    /// Charges one request's `usage` under `quota`; the longest wait any limit asks for.
    fn charge(&mut self, now: Instant, quota: &Quota, usage: Usage) -> Duration {
        if self.quota != *quota {
            *self = Clocks {
                quota: *quota,
                ..Clocks::default()
            };
        }
        let mut wait = Duration::ZERO;
        if let Some(rate) = quota.produce_bytes_per_sec
            && usage.produce_bytes > 0
        {
            wait = wait.max(self.produce.charge(now, usage.produce_bytes, rate));
        }
        if let Some(rate) = quota.fetch_bytes_per_sec
            && usage.fetch_bytes > 0
        {
            wait = wait.max(self.fetch.charge(now, usage.fetch_bytes, rate));
        }
        if let Some(rate) = quota.requests_per_sec {
            wait = wait.max(self.requests.charge(now, 1, u64::from(rate)));
        }
        wait
    }
}

/// This broker's clocks, by principal.
#[derive(Debug, Default)]
pub(crate) struct QuotaClocks {
    /// A `std` mutex: held only to charge a request, never across an await.
    by_principal: Mutex<HashMap<String, Clocks>>,
}

/// Principals whose clocks are kept at most: beyond it, the idle ones are forgotten.
const MAX_TRACKED: usize = 10_000;

impl QuotaClocks {
    /// Charges a request of `principal` under `quota`; how long its answer waits.
    pub(crate) fn charge(&self, principal: &str, quota: &Quota, usage: Usage) -> Duration {
        let now = Instant::now();
        let mut map = self.by_principal.lock().expect("quota lock");
        if map.len() >= MAX_TRACKED && !map.contains_key(principal) {
            map.retain(|_, c| {
                [c.produce, c.fetch, c.requests]
                    .iter()
                    .any(|r| r.paid_until.is_some_and(|t| t > now))
            });
        }
        map.entry(principal.to_owned())
            .or_default()
            .charge(now, quota, usage)
    }
}

/// `SetQuota` and `ListQuotas`. Blocking: proposes and waits.
pub(crate) fn admin(broker: &Broker, request: Request) -> Result<ResponseBody, WireError> {
    match request {
        Request::SetQuota { principal, quota } => {
            broker
                .controller
                .propose(MetadataCommand::SetQuota {
                    principal: principal.clone(),
                    quota,
                })
                .map_err(propose_error)?;
            tracing::info!(%principal, ?quota, "quota set");
        }
        Request::ListQuotas => {}
        _ => {
            return Err(WireError::new(
                ErrorCode::InvalidRequest,
                "request routed to the wrong handler",
            ));
        }
    }
    Ok(ResponseBody::Quotas(
        broker.controller.read(|s| s.security().quotas()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traffic_under_the_quota_is_not_held_back() {
        let mut clock = RateClock::default();
        let t0 = Instant::now();
        // 1,000 bytes every 10 ms against 200 KB/s: half the quota.
        for i in 0..100 {
            let now = t0 + Duration::from_millis(10 * i);
            assert_eq!(clock.charge(now, 1_000, 200_000), Duration::ZERO);
        }
    }

    #[test]
    fn traffic_over_the_quota_is_spaced_out_to_it() {
        // A client that sends its next request as soon as the previous answer arrives, with
        // 16 KiB requests against 100 KiB/s: over 10 s of its time it gets 10 s of quota,
        // plus the burst.
        let mut clock = RateClock::default();
        let t0 = Instant::now();
        let mut now = t0;
        let mut sent = 0u64;
        while now < t0 + Duration::from_secs(10) {
            now += clock.charge(now, 16 * 1024, 100 * 1024);
            sent += 16 * 1024;
        }
        let rate = sent as f64 / (now - t0).as_secs_f64();
        assert!(
            (rate - 102_400.0).abs() / 102_400.0 < 0.03,
            "rate {rate} against a quota of 102400"
        );
        // Five requests in flight at once are answered one cost apart.
        let mut clock = RateClock::default();
        let waits: Vec<Duration> = (0..5).map(|_| clock.charge(t0, 10_000, 100_000)).collect();
        assert_eq!(waits[0], Duration::from_millis(50));
        assert_eq!(waits[4], Duration::from_millis(450));
    }

    #[test]
    fn one_principal_does_not_hold_back_another_and_waits_are_capped() {
        let clocks = QuotaClocks::default();
        let quota = Quota {
            produce_bytes_per_sec: Some(1_000),
            requests_per_sec: Some(1_000),
            ..Quota::default()
        };
        let big = Usage {
            produce_bytes: 1_000_000,
            fetch_bytes: 0,
        };
        assert_eq!(clocks.charge("a", &quota, big), MAX_THROTTLE);
        // The debt is capped: the next request waits no longer than the cap either, and a
        // changed quota starts afresh.
        assert!(clocks.charge("a", &quota, Usage::default()) <= MAX_THROTTLE);
        let raised = Quota {
            produce_bytes_per_sec: Some(1_000_000_000),
            ..quota
        };
        let small = Usage {
            produce_bytes: 1_000,
            fetch_bytes: 0,
        };
        assert_eq!(clocks.charge("a", &raised, small), Duration::ZERO);
        assert_eq!(clocks.charge("b", &quota, Usage::default()), Duration::ZERO);
        // A fetch is not charged against the produce limit.
        let fetch = Usage {
            produce_bytes: 0,
            fetch_bytes: 10,
        };
        assert_eq!(clocks.charge("b", &quota, fetch), Duration::ZERO);
    }
}
