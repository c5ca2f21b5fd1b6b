//! Built-in aggregate: counts records per key in tumbling event-time windows.
//!
//! Config: `window_ms` (required, > 0). A record with timestamp `t` falls in the window
//! `[start, start + window_ms)` with `start = floor(t / window_ms) * window_ms`.
//!
//! There are no timers (the host gives plugins no clock). The watermark is the highest
//! timestamp seen so far; a window closes, and is emitted, as soon as the watermark reaches
//! its end. So the last window of a quiet stream is emitted when a later record arrives.
//! A record whose window has already closed (it is later than the watermark allows) is
//! dropped and counted in a `warn` log line.
//!
//! Each closed window emits one record: key = the input key (absent stays absent), value =
//! the count as decimal text, timestamp = the window end, headers `window_start` and
//! `window_end` (decimal milliseconds). Windows closing together are emitted in order of
//! end, then key bytes.
//!
//! State (kept by the host, checkpointed with the input offsets), keys:
//! - `m` -> watermark, i64 little-endian;
//! - `w` + window end (i64 big-endian with the sign bit flipped, so byte order is time
//!   order) + `0` (no key) or `1` + key bytes -> count, u64 little-endian.

use sluice_plugin::{Aggregate, Config, Error, PARTITION_UNSET, Record, Result, State, log};

const WATERMARK: &[u8] = b"m";
const WINDOW: u8 = b'w';

struct WindowCount {
    window_ms: i64,
    /// End of the earliest open window; `None` until read from state (the guest's memory is
    /// fresh after a restart, the state store is not).
    next_close: Option<Option<i64>>,
    late: u64,
}

fn order_bytes(t: i64) -> [u8; 8] {
    ((t as u64) ^ (1 << 63)).to_be_bytes()
}

fn from_order_bytes(b: &[u8]) -> Option<i64> {
    let a: [u8; 8] = b.try_into().ok()?;
    Some((u64::from_be_bytes(a) ^ (1 << 63)) as i64)
}

fn window_key(end: i64, key: Option<&[u8]>) -> Vec<u8> {
    let mut k = Vec::with_capacity(10 + key.map_or(0, <[u8]>::len));
    k.push(WINDOW);
    k.extend_from_slice(&order_bytes(end));
    match key {
        None => k.push(0),
        Some(key) => {
            k.push(1);
            k.extend_from_slice(key);
        }
    }
    k
}

/// (window end, record key) of a state key.
fn parse_window_key(k: &[u8]) -> Option<(i64, Option<Vec<u8>>)> {
    let end = from_order_bytes(k.get(1..9)?)?;
    let key = match *k.get(9)? {
        0 => None,
        _ => Some(k[10..].to_vec()),
    };
    Some((end, key))
}

impl WindowCount {
    fn earliest_open(state: &State) -> Option<i64> {
        // Keys come back sorted, so the first is the earliest window.
        state
            .keys(&[WINDOW])
            .first()
            .and_then(|k| parse_window_key(k))
            .map(|(end, _)| end)
    }

    fn emit_closed(&mut self, watermark: i64, state: &mut State, out: &mut Vec<Record>) {
        for k in state.keys(&[WINDOW]) {
            let Some((end, key)) = parse_window_key(&k) else {
                continue;
            };
            if end > watermark {
                self.next_close = Some(Some(end));
                return;
            }
            let count = state
                .get(&k)
                .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
                .map_or(0, u64::from_le_bytes);
            state.delete(&k);
            let start = end - self.window_ms;
            out.push(Record {
                key,
                value: Some(count.to_string().into_bytes()),
                headers: vec![
                    ("window_start".into(), Some(start.to_string().into_bytes())),
                    ("window_end".into(), Some(end.to_string().into_bytes())),
                ],
                timestamp: end,
                partition: PARTITION_UNSET,
                offset: 0,
            });
        }
        self.next_close = Some(None);
    }
}

impl Aggregate for WindowCount {
    fn new(config: &Config) -> Result<Self> {
        let window_ms: i64 = config.parse_required("window_ms")?;
        if window_ms <= 0 {
            return Err(Error::msg(format!(
                "config `window_ms` = {window_ms} must be a positive number of milliseconds"
            )));
        }
        Ok(WindowCount {
            window_ms,
            next_close: None,
            late: 0,
        })
    }

    fn aggregate(
        &mut self,
        record: Record,
        state: &mut State,
        out: &mut Vec<Record>,
    ) -> Result<()> {
        let watermark = state
            .get(WATERMARK)
            .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
            .map(i64::from_le_bytes);
        let start = record.timestamp.div_euclid(self.window_ms) * self.window_ms;
        let end = start.saturating_add(self.window_ms);
        if watermark.is_some_and(|w| end <= w) {
            self.late += 1;
            log::warn(&format!(
                "dropped a late record (timestamp {}, its window closed at {end}); {} so far",
                record.timestamp, self.late
            ));
            return Ok(());
        }
        let next_close = match self.next_close {
            Some(n) => n,
            None => Self::earliest_open(state),
        };
        let k = window_key(end, record.key.as_deref());
        let count = state.get_u64(&k).unwrap_or(0) + 1;
        state.set_u64(&k, count);
        self.next_close = Some(Some(next_close.map_or(end, |n| n.min(end))));

        let watermark = watermark.map_or(record.timestamp, |w| w.max(record.timestamp));
        state.set(WATERMARK, &watermark.to_le_bytes());
        if self.next_close.flatten().is_some_and(|n| n <= watermark) {
            self.emit_closed(watermark, state, out);
        }
        Ok(())
    }
}

sluice_plugin::export_aggregate!(WindowCount);
