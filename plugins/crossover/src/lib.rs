//! Transform (aggregate): moving-average crossover signals per symbol, for the trading-signal
//! example. Input records are ticks, `SYMBOL,SEQ,PRICE` (the price in integer cents). For each
//! symbol it keeps the last `long` prices (config, default 8) in the state store; once it has
//! them, it compares the average of the last `short` (default 3) with the average of all
//! `long`. When the short average crosses above the long one it emits `SYMBOL,SEQ,BUY`, when
//! it crosses below `SYMBOL,SEQ,SELL` (keyed by symbol). Averages are compared exactly, in
//! integers (`short_sum * long` against `long_sum * short`); equal averages cross nothing.
//!
//! State, per symbol: `p/SYMBOL` -> the last prices (i64 little-endian each, oldest first);
//! `s/SYMBOL` -> the side of the last difference that was not zero (`+` or `-`).

use sluice_plugin::{Aggregate, Config, Error, PARTITION_UNSET, Record, Result, State};

struct Crossover {
    short: usize,
    long: usize,
}

impl Aggregate for Crossover {
    fn new(config: &Config) -> Result<Self> {
        let short: usize = config.parse_or("short", 3)?;
        let long: usize = config.parse_or("long", 8)?;
        if short == 0 || long <= short || long > 1000 {
            return Err(Error::msg(format!(
                "short {short} and long {long}: need 0 < short < long <= 1000"
            )));
        }
        Ok(Crossover { short, long })
    }

    fn aggregate(&mut self, record: Record, state: &mut State, out: &mut Vec<Record>) -> Result<()> {
        let value = record.value.unwrap_or_default();
        let text = String::from_utf8_lossy(&value);
        let mut fields = text.trim().split(',');
        let (Some(symbol), Some(seq), Some(price)) = (fields.next(), fields.next(), fields.next())
        else {
            return Ok(()); // not a tick: ignored
        };
        let Ok(price) = price.parse::<i64>() else {
            return Ok(());
        };
        let prices_key = format!("p/{symbol}").into_bytes();
        let mut prices: Vec<i64> = state
            .get(&prices_key)
            .unwrap_or_default()
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect();
        prices.push(price);
        if prices.len() > self.long {
            prices.remove(0);
        }
        let bytes: Vec<u8> = prices.iter().flat_map(|p| p.to_le_bytes()).collect();
        state.set(&prices_key, &bytes);
        if prices.len() < self.long {
            return Ok(());
        }
        let long_sum: i128 = prices.iter().map(|p| i128::from(*p)).sum();
        let short_sum: i128 = prices[self.long - self.short..]
            .iter()
            .map(|p| i128::from(*p))
            .sum();
        let diff = short_sum * self.long as i128 - long_sum * self.short as i128;
        if diff == 0 {
            return Ok(());
        }
        let side = if diff > 0 { b"+" } else { b"-" };
        let side_key = format!("s/{symbol}").into_bytes();
        let before = state.get(&side_key);
        state.set(&side_key, side);
        let signal = match before.as_deref() {
            Some(b"-") if diff > 0 => "BUY",
            Some(b"+") if diff < 0 => "SELL",
            _ => return Ok(()),
        };
        out.push(Record {
            key: Some(symbol.as_bytes().to_vec()),
            value: Some(format!("{symbol},{seq},{signal}").into_bytes()),
            headers: Vec::new(),
            timestamp: record.timestamp,
            partition: PARTITION_UNSET,
            offset: 0,
        });
        Ok(())
    }
}

sluice_plugin::export_aggregate!(Crossover);
