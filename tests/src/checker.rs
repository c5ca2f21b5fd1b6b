//! A Jepsen-style checker for a streaming history: what producers had acknowledged, what
//! consumers saw, and what each partition finally holds. It counts the anomalies a replicated
//! log must never show (each must be 0):
//!
//! - **lost**: an acknowledged write missing from the final log;
//! - **duplicated**: a write stored more than once;
//! - **reordered**: one producer's writes to one partition stored in another order than it sent
//!   them (idempotent producers keep their order);
//! - **inconsistent offsets**: one offset with two values — across readers, across time, or
//!   between an acknowledgement and the final log;
//! - **non-monotonic polls**: a consumer's offsets in a partition going backwards without a seek;
//! - **aborted reads**: a consumer saw a record the final log does not hold.
//!
//! Values identify their write: `p<producer>-<sequence>`, sequence counting that producer's
//! sends from 0.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

/// A write the producer learned was stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    pub value: String,
    pub partition: u32,
    pub offset: u64,
}

/// A record a consumer received, in the order it received them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Read {
    pub consumer: usize,
    pub partition: u32,
    pub offset: u64,
    pub value: String,
    /// The consumer sought (or was reassigned the partition) just before this read: its
    /// position may go back here without it counting as non-monotonic.
    pub after_seek: bool,
}

/// Everything a test run observed.
#[derive(Debug, Default, Clone)]
pub struct History {
    pub acks: Vec<Ack>,
    pub reads: Vec<Read>,
    /// Every partition's records at the end, by offset.
    pub final_log: BTreeMap<u32, BTreeMap<u64, String>>,
}

/// The anomaly counts, with a few examples of each.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    pub acknowledged: usize,
    pub stored: usize,
    pub read: usize,
    pub lost: usize,
    pub duplicated: usize,
    pub reordered: usize,
    pub inconsistent_offsets: usize,
    pub non_monotonic_polls: usize,
    pub aborted_reads: usize,
    pub examples: Vec<String>,
}

impl Report {
    /// Whether every anomaly count is 0.
    pub fn is_clean(&self) -> bool {
        self.lost == 0
            && self.duplicated == 0
            && self.reordered == 0
            && self.inconsistent_offsets == 0
            && self.non_monotonic_polls == 0
            && self.aborted_reads == 0
    }

    fn example(&mut self, e: String) {
        if self.examples.len() < 10 {
            self.examples.push(e);
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<22}{:>10}\n{:<22}{:>10}\n{:<22}{:>10}",
            "acknowledged", self.acknowledged, "stored", self.stored, "read", self.read
        )?;
        for (name, n) in [
            ("lost", self.lost),
            ("duplicated", self.duplicated),
            ("reordered", self.reordered),
            ("inconsistent offsets", self.inconsistent_offsets),
            ("non-monotonic polls", self.non_monotonic_polls),
            ("aborted reads", self.aborted_reads),
        ] {
            writeln!(f, "{name:<22}{n:>10}")?;
        }
        for e in &self.examples {
            writeln!(f, "  e.g. {e}")?;
        }
        Ok(())
    }
}

/// `(producer, sequence)` of a value `p<producer>-<sequence>`.
fn writer_of(value: &str) -> Option<(u64, u64)> {
    let (p, s) = value.strip_prefix('p')?.split_once('-')?;
    Some((p.parse().ok()?, s.parse().ok()?))
}

/// Checks a history; see the module docs for what is counted.
pub fn check(history: &History) -> Report {
    let mut r = Report {
        acknowledged: history.acks.len(),
        read: history.reads.len(),
        ..Report::default()
    };
    // Where each value is stored, and how often.
    let mut stored_at: HashMap<&str, Vec<(u32, u64)>> = HashMap::new();
    for (p, log) in &history.final_log {
        for (o, v) in log {
            stored_at.entry(v.as_str()).or_default().push((*p, *o));
            r.stored += 1;
        }
    }
    for (v, places) in &stored_at {
        if places.len() > 1 {
            r.duplicated += places.len() - 1;
            r.example(format!("{v} stored {} times: {places:?}", places.len()));
        }
    }
    // Acknowledged writes: present, at the offset acknowledged.
    for a in &history.acks {
        match stored_at.get(a.value.as_str()) {
            None => {
                r.lost += 1;
                r.example(format!(
                    "{} acknowledged at {}/{} is lost",
                    a.value, a.partition, a.offset
                ));
            }
            Some(places) if !places.contains(&(a.partition, a.offset)) => {
                r.inconsistent_offsets += 1;
                r.example(format!(
                    "{} acknowledged at {}/{} is stored at {places:?}",
                    a.value, a.partition, a.offset
                ));
            }
            Some(_) => {}
        }
    }
    // One producer's writes to one partition, in the order it sent them.
    for (p, log) in &history.final_log {
        let mut last: HashMap<u64, u64> = HashMap::new();
        for (o, v) in log {
            let Some((producer, seq)) = writer_of(v) else {
                continue;
            };
            if let Some(prev) = last.insert(producer, seq)
                && seq < prev
            {
                r.reordered += 1;
                r.example(format!("{v} at {p}/{o} after p{producer}-{prev}"));
            }
        }
    }
    // Reads: the offset holds the value read, at every read and at the end.
    let mut seen_at: HashMap<(u32, u64), &str> = HashMap::new();
    let mut position: HashMap<(usize, u32), u64> = HashMap::new();
    let mut aborted: HashSet<&str> = HashSet::new();
    for read in &history.reads {
        let key = (read.partition, read.offset);
        match seen_at.insert(key, read.value.as_str()) {
            Some(other) if other != read.value => {
                r.inconsistent_offsets += 1;
                r.example(format!(
                    "{}/{} read as {other} and as {}",
                    read.partition, read.offset, read.value
                ));
            }
            _ => {}
        }
        match history
            .final_log
            .get(&read.partition)
            .and_then(|log| log.get(&read.offset))
        {
            Some(v) if v == &read.value => {}
            Some(v) => {
                r.inconsistent_offsets += 1;
                r.example(format!(
                    "{}/{} read as {} but finally holds {v}",
                    read.partition, read.offset, read.value
                ));
            }
            None => {
                if aborted.insert(read.value.as_str()) {
                    r.aborted_reads += 1;
                    r.example(format!(
                        "{} read at {}/{} is not in the final log",
                        read.value, read.partition, read.offset
                    ));
                }
            }
        }
        let pos = position.entry((read.consumer, read.partition)).or_insert(0);
        if read.offset < *pos && !read.after_seek {
            r.non_monotonic_polls += 1;
            r.example(format!(
                "consumer {} read {}/{} after offset {}",
                read.consumer,
                read.partition,
                read.offset,
                *pos - 1
            ));
        }
        *pos = read.offset + 1;
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(entries: &[(u32, u64, &str)]) -> BTreeMap<u32, BTreeMap<u64, String>> {
        let mut out: BTreeMap<u32, BTreeMap<u64, String>> = BTreeMap::new();
        for (p, o, v) in entries {
            out.entry(*p).or_default().insert(*o, (*v).to_string());
        }
        out
    }

    fn ack(v: &str, p: u32, o: u64) -> Ack {
        Ack {
            value: v.into(),
            partition: p,
            offset: o,
        }
    }

    fn read(c: usize, p: u32, o: u64, v: &str, after_seek: bool) -> Read {
        Read {
            consumer: c,
            partition: p,
            offset: o,
            value: v.into(),
            after_seek,
        }
    }

    #[test]
    fn a_clean_history_is_clean() {
        let h = History {
            acks: vec![ack("p0-0", 0, 0), ack("p0-1", 0, 1), ack("p1-0", 1, 0)],
            reads: vec![
                read(0, 0, 0, "p0-0", false),
                read(0, 0, 1, "p0-1", false),
                read(1, 1, 0, "p1-0", false),
            ],
            final_log: log(&[(0, 0, "p0-0"), (0, 1, "p0-1"), (1, 0, "p1-0")]),
        };
        let r = check(&h);
        assert!(r.is_clean(), "{r}");
        assert_eq!((r.acknowledged, r.stored, r.read), (3, 3, 3));
    }

    #[test]
    fn every_anomaly_is_counted() {
        let h = History {
            acks: vec![
                ack("p0-0", 0, 0),
                ack("p0-1", 0, 1),
                ack("p0-9", 0, 7), // lost
                ack("p1-0", 1, 5), // stored elsewhere
            ],
            reads: vec![
                read(0, 0, 1, "p0-1", false),
                read(0, 0, 0, "p0-0", false), // backwards without a seek
                read(1, 0, 0, "p0-0", true),
                read(1, 0, 0, "p0-0", true), // re-read after a seek: fine
                read(2, 0, 3, "p0-7", false), // aborted: not in the final log
                read(2, 0, 1, "p9-9", true), // inconsistent with the final log and reader 0
            ],
            final_log: log(&[
                (0, 0, "p0-0"),
                (0, 1, "p0-1"),
                (0, 2, "p0-1"), // duplicated
                (1, 0, "p1-0"),
                (1, 1, "p2-5"),
                (1, 2, "p2-4"), // reordered
            ]),
        };
        let r = check(&h);
        assert_eq!(r.lost, 1, "{r}");
        assert_eq!(r.duplicated, 1, "{r}");
        assert_eq!(r.reordered, 1, "p2-4 after p2-5: {r}");
        assert_eq!(r.non_monotonic_polls, 1, "{r}");
        assert_eq!(r.aborted_reads, 1, "{r}");
        assert_eq!(r.inconsistent_offsets, 3, "{r}");
        assert!(!r.is_clean());
        assert!(r.to_string().contains("lost"));
    }
}
