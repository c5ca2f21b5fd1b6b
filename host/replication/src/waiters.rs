//! `acks=all` producers waiting for the high watermark to pass their batch.

use std::collections::BTreeMap;

use crate::Offset;

/// Waiters keyed by the offset after their batch: a waiter is answered once the high watermark
/// reaches it.
#[derive(Debug)]
pub struct AckWaiters<T> {
    by_end: BTreeMap<Offset, Vec<T>>,
}

impl<T> Default for AckWaiters<T> {
    fn default() -> Self {
        AckWaiters {
            by_end: BTreeMap::new(),
        }
    }
}

impl<T> AckWaiters<T> {
    pub fn new() -> Self {
        Self::default()
    }

    /// `waiter`'s batch ends before `end`.
    pub fn push(&mut self, end: Offset, waiter: T) {
        self.by_end.entry(end).or_default().push(waiter);
    }

    /// The waiters the high watermark `hw` answers, oldest first.
    pub fn ready(&mut self, hw: Offset) -> Vec<T> {
        let rest = self.by_end.split_off(&(hw + 1));
        let done = std::mem::replace(&mut self.by_end, rest);
        done.into_values().flatten().collect()
    }

    /// Every waiter, for answering with an error (leadership lost).
    pub fn drain(&mut self) -> Vec<T> {
        std::mem::take(&mut self.by_end)
            .into_values()
            .flatten()
            .collect()
    }

    pub fn len(&self) -> usize {
        self.by_end.values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.by_end.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiters_are_answered_when_the_watermark_reaches_their_batch_end() {
        let mut w = AckWaiters::new();
        w.push(5, "a");
        w.push(10, "b");
        w.push(10, "c");
        w.push(12, "d");
        assert_eq!(w.ready(4), Vec::<&str>::new());
        assert_eq!(w.ready(10), vec!["a", "b", "c"]);
        assert_eq!(w.len(), 1);
        assert_eq!(w.drain(), vec!["d"]);
        assert!(w.is_empty());
    }
}
