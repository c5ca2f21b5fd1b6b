//! The keyed state store a transform reads and writes through the WIT `state` interface.

use std::collections::BTreeMap;

/// Where a transform's state lives. The broker checkpoints it with the input offsets; the
/// runtime only calls it from the thread running the instance.
pub trait StateStore: Send {
    fn get(&self, key: &[u8]) -> Option<Vec<u8>>;
    fn set(&mut self, key: &[u8], value: &[u8]);
    fn delete(&mut self, key: &[u8]);
    /// Keys starting with `prefix`, ascending byte order.
    fn keys(&self, prefix: &[u8]) -> Vec<Vec<u8>>;
}

impl std::fmt::Debug for dyn StateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("dyn StateStore")
    }
}

/// An in-memory state store that snapshots to bytes ([`MemoryState::to_bytes`]) so the
/// broker can write it in the same transaction as the input offsets.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemoryState(pub BTreeMap<Vec<u8>, Vec<u8>>);

/// Snapshot format version (first byte of [`MemoryState::to_bytes`]).
const SNAPSHOT_VERSION: u8 = 1;

impl MemoryState {
    pub fn new() -> Self {
        Self::default()
    }

    /// A copy of every entry of any store (e.g. to snapshot the `&dyn StateStore` that
    /// [`crate::TransformInstance::state`] returns).
    pub fn copy_of(store: &dyn StateStore) -> Self {
        Self(
            store
                .keys(&[])
                .into_iter()
                .filter_map(|k| store.get(&k).map(|v| (k, v)))
                .collect(),
        )
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Every entry: `version:u8 (=1) count:u32 (key_len:u32 key value_len:u32 value)*`,
    /// little-endian, keys ascending.
    pub fn to_bytes(&self) -> Vec<u8> {
        let size = 5 + self
            .0
            .iter()
            .map(|(k, v)| 8 + k.len() + v.len())
            .sum::<usize>();
        let mut b = Vec::with_capacity(size);
        b.push(SNAPSHOT_VERSION);
        b.extend_from_slice(&(self.0.len() as u32).to_le_bytes());
        for (k, v) in &self.0 {
            b.extend_from_slice(&(k.len() as u32).to_le_bytes());
            b.extend_from_slice(k);
            b.extend_from_slice(&(v.len() as u32).to_le_bytes());
            b.extend_from_slice(v);
        }
        b
    }

    /// Reads what [`MemoryState::to_bytes`] wrote; `Err` with a reason on anything else.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
        fn take<'a>(b: &mut &'a [u8], n: usize) -> Result<&'a [u8], String> {
            if b.len() < n {
                return Err("state snapshot is truncated".into());
            }
            let (h, t) = b.split_at(n);
            *b = t;
            Ok(h)
        }
        fn u32_(b: &mut &[u8]) -> Result<usize, String> {
            let s = take(b, 4)?;
            Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]) as usize)
        }
        let mut b = bytes;
        let version = take(&mut b, 1)?[0];
        if version != SNAPSHOT_VERSION {
            return Err(format!("state snapshot version {version} is not supported"));
        }
        let count = u32_(&mut b)?;
        let mut map = BTreeMap::new();
        for _ in 0..count {
            let kl = u32_(&mut b)?;
            let k = take(&mut b, kl)?.to_vec();
            let vl = u32_(&mut b)?;
            let v = take(&mut b, vl)?.to_vec();
            map.insert(k, v);
        }
        if !b.is_empty() {
            return Err(format!(
                "{} bytes left over after the state snapshot",
                b.len()
            ));
        }
        Ok(Self(map))
    }
}

impl StateStore for MemoryState {
    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.0.get(key).cloned()
    }

    fn set(&mut self, key: &[u8], value: &[u8]) {
        self.0.insert(key.to_vec(), value.to_vec());
    }

    fn delete(&mut self, key: &[u8]) {
        self.0.remove(key);
    }

    fn keys(&self, prefix: &[u8]) -> Vec<Vec<u8>> {
        self.0
            .range(prefix.to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, _)| k.clone())
            .collect()
    }
}

/// The writes of the call in progress, applied to the store only when the call succeeds:
/// a failed call leaves the state exactly as the last successful one did.
#[derive(Debug, Default)]
pub(crate) struct PendingWrites(BTreeMap<Vec<u8>, Option<Vec<u8>>>);

impl PendingWrites {
    pub(crate) fn get(&self, store: &dyn StateStore, key: &[u8]) -> Option<Vec<u8>> {
        match self.0.get(key) {
            Some(v) => v.clone(),
            None => store.get(key),
        }
    }

    pub(crate) fn set(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.0.insert(key, Some(value));
    }

    pub(crate) fn delete(&mut self, key: Vec<u8>) {
        self.0.insert(key, None);
    }

    pub(crate) fn keys(&self, store: &dyn StateStore, prefix: &[u8]) -> Vec<Vec<u8>> {
        let mut keys: std::collections::BTreeSet<Vec<u8>> = store
            .keys(prefix)
            .into_iter()
            .filter(|k| !matches!(self.0.get(k), Some(None)))
            .collect();
        for (k, v) in self
            .0
            .range(prefix.to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix))
        {
            if v.is_some() {
                keys.insert(k.clone());
            }
        }
        keys.into_iter().collect()
    }

    pub(crate) fn commit(&mut self, store: &mut dyn StateStore) {
        for (k, v) in std::mem::take(&mut self.0) {
            match v {
                Some(v) => store.set(&k, &v),
                None => store.delete(&k),
            }
        }
    }

    pub(crate) fn discard(&mut self) {
        self.0.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_round_trip_and_garbage() {
        let mut s = MemoryState::new();
        s.set(b"a", b"1");
        s.set(b"", b"");
        s.set(b"b\xff", &[0; 300]);
        let b = s.to_bytes();
        assert_eq!(MemoryState::from_bytes(&b).unwrap(), s);
        assert!(MemoryState::from_bytes(&b[..b.len() - 1]).is_err());
        assert!(MemoryState::from_bytes(&[]).is_err());
        assert!(MemoryState::from_bytes(&[1, 255, 255, 255, 255]).is_err());
    }

    #[test]
    fn keys_by_prefix() {
        let mut s = MemoryState::new();
        for k in [&b"wa"[..], b"w", b"x", b"v", b"wb"] {
            s.set(k, b"");
        }
        assert_eq!(
            s.keys(b"w"),
            vec![b"w".to_vec(), b"wa".to_vec(), b"wb".to_vec()]
        );
        assert_eq!(s.keys(b"").len(), 5);
    }

    #[test]
    fn pending_writes_overlay_then_commit_or_discard() {
        let mut s = MemoryState::new();
        s.set(b"k1", b"old");
        s.set(b"k2", b"keep");
        let mut p = PendingWrites::default();
        p.set(b"k1".to_vec(), b"new".to_vec());
        p.delete(b"k2".to_vec());
        p.set(b"k3".to_vec(), b"3".to_vec());
        assert_eq!(p.get(&s, b"k1"), Some(b"new".to_vec()));
        assert_eq!(p.get(&s, b"k2"), None);
        assert_eq!(p.keys(&s, b"k"), vec![b"k1".to_vec(), b"k3".to_vec()]);
        let before = s.clone();
        p.discard();
        assert_eq!(p.get(&s, b"k2"), Some(b"keep".to_vec()));
        assert_eq!(s, before);
        p.set(b"k1".to_vec(), b"new".to_vec());
        p.delete(b"k2".to_vec());
        p.commit(&mut s);
        assert_eq!(s.keys(b""), vec![b"k1".to_vec()]);
        assert_eq!(s.get(b"k1"), Some(b"new".to_vec()));
    }
}
