//! Built-in partitioner: routes each record by a field of its JSON value.
//!
//! Config: `field` (required), a dotted path (`user.id`) or a JSON Pointer (`/user/id`).
//!
//! Hash: the field's bytes — a string's UTF-8 bytes, any other JSON value's compact JSON
//! text (`42`, `true`, `{"a":1}`) — go through the same function as Sluice's (and Kafka's)
//! key-hash partitioner: `(murmur2(bytes) & 0x7fffffff) % partition_count`, murmur2 with
//! seed `0x9747b28c`. So `{"user":"alice"}` lands where a record keyed `alice` would.
//!
//! A record whose value is not JSON or lacks the field falls back to its key's hash, and to
//! partition 0 when it has no key either.

use serde_json::Value;
use sluice_plugin::{Config, Error, Partitioner, RecordRef, Result};

struct JsonPartitioner {
    path: Vec<String>,
}

fn lookup<'v>(mut v: &'v Value, path: &[String]) -> Option<&'v Value> {
    for step in path {
        v = match v {
            Value::Object(m) => m.get(step)?,
            Value::Array(a) => a.get(step.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(v)
}

impl Partitioner for JsonPartitioner {
    fn new(config: &Config) -> Result<Self> {
        let field = config.require("field")?;
        if field.is_empty() {
            return Err(Error::msg("config `field` is empty"));
        }
        let path = match field.strip_prefix('/') {
            Some(p) => p
                .split('/')
                .map(|s| s.replace("~1", "/").replace("~0", "~"))
                .collect(),
            None => field.split('.').map(str::to_owned).collect(),
        };
        Ok(JsonPartitioner { path })
    }

    fn partition(&mut self, record: &RecordRef<'_>, partition_count: u32) -> Result<u32> {
        let doc: Option<Value> = record.value.and_then(|v| serde_json::from_slice(v).ok());
        let bytes = match doc.as_ref().and_then(|d| lookup(d, &self.path)) {
            Some(Value::String(s)) => s.clone().into_bytes(),
            Some(other) => other.to_string().into_bytes(),
            None => match record.key {
                Some(k) => k.to_vec(),
                None => return Ok(0),
            },
        };
        Ok(sluice_plugin::partition_for_key(&bytes, partition_count))
    }
}

sluice_plugin::export_partitioner!(JsonPartitioner);
