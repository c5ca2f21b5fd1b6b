//! Built-in filter: keeps the records whose JSON value has a field matching a condition.
//!
//! Config:
//! - `field` (required): where to look. `a.b.0.c` walks objects by key and arrays by index;
//!   a value starting with `/` is a JSON Pointer (RFC 6901), for keys containing dots.
//! - `op` (required): `eq`, `ne`, `gt`, `lt`, `contains` or `exists`.
//! - `value` (required except for `exists`): parsed as JSON when it is valid JSON
//!   (`42`, `true`, `"42"`, `null`), otherwise taken as a string (`active` = `"active"`).
//!
//! Matching:
//! - `eq` / `ne`: JSON equality; numbers compare by value (`1` equals `1.0`).
//! - `gt` / `lt`: numbers by value, strings by byte order; other pairs never match.
//! - `contains`: a string field contains the value as a substring, or an array field has
//!   an element equal to the value.
//! - `exists`: the field is present (even if `null`).
//! - A record whose value is missing or not JSON, or lacks the field, matches only `ne`.

use serde_json::Value;
use sluice_plugin::{Config, Error, Filter, RecordRef, Result};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    Eq,
    Ne,
    Gt,
    Lt,
    Contains,
    Exists,
}

struct JsonFilter {
    path: Vec<String>,
    op: Op,
    value: Value,
}

fn parse_path(field: &str) -> Result<Vec<String>> {
    if field.is_empty() {
        return Err(Error::msg("config `field` is empty"));
    }
    Ok(if let Some(pointer) = field.strip_prefix('/') {
        pointer
            .split('/')
            .map(|s| s.replace("~1", "/").replace("~0", "~"))
            .collect()
    } else {
        field.split('.').map(str::to_owned).collect()
    })
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

fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

impl Filter for JsonFilter {
    fn new(config: &Config) -> Result<Self> {
        let path = parse_path(&config.require("field")?)?;
        let op = match config.require("op")?.as_str() {
            "eq" => Op::Eq,
            "ne" => Op::Ne,
            "gt" => Op::Gt,
            "lt" => Op::Lt,
            "contains" => Op::Contains,
            "exists" => Op::Exists,
            other => {
                return Err(Error::msg(format!(
                    "config `op` = {other:?} is not one of eq, ne, gt, lt, contains, exists"
                )));
            }
        };
        let value = if op == Op::Exists {
            Value::Null
        } else {
            let raw = config.require("value")?;
            serde_json::from_str(&raw).unwrap_or(Value::String(raw))
        };
        if matches!(op, Op::Gt | Op::Lt) && !(value.is_number() || value.is_string()) {
            return Err(Error::msg(format!(
                "config `value` = {value} cannot be ordered: gt and lt need a number or a string"
            )));
        }
        Ok(JsonFilter { path, op, value })
    }

    fn keep(&mut self, record: &RecordRef<'_>) -> Result<bool> {
        let doc: Option<Value> = record.value.and_then(|v| serde_json::from_slice(v).ok());
        let Some(field) = doc.as_ref().and_then(|d| lookup(d, &self.path)) else {
            return Ok(self.op == Op::Ne);
        };
        Ok(match self.op {
            Op::Exists => true,
            Op::Eq => json_eq(field, &self.value),
            Op::Ne => !json_eq(field, &self.value),
            Op::Gt | Op::Lt => {
                let ord = match (field, &self.value) {
                    (Value::Number(a), Value::Number(b)) => match (a.as_f64(), b.as_f64()) {
                        (Some(x), Some(y)) => x.partial_cmp(&y),
                        _ => None,
                    },
                    (Value::String(a), Value::String(b)) => Some(a.as_str().cmp(b.as_str())),
                    _ => None,
                };
                match ord {
                    Some(std::cmp::Ordering::Greater) => self.op == Op::Gt,
                    Some(std::cmp::Ordering::Less) => self.op == Op::Lt,
                    _ => false,
                }
            }
            Op::Contains => match (field, &self.value) {
                (Value::String(s), Value::String(needle)) => s.contains(needle.as_str()),
                (Value::Array(items), v) => items.iter().any(|i| json_eq(i, v)),
                _ => false,
            },
        })
    }
}

sluice_plugin::export_filter!(JsonFilter);
