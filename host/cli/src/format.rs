//! The consume output format: `%k %v %p %o %t %%` and `\n \t \\` escapes, like kcat's `-f`.

use sluice_client::ConsumerRecord;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Literal(Vec<u8>),
    Key,
    Value,
    Partition,
    Offset,
    Timestamp,
}

/// A parsed `--format` string.
#[derive(Debug, Clone)]
pub struct Format(Vec<Piece>);

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut pieces = Vec::new();
        let mut lit = Vec::new();
        let mut chars = s.chars();
        while let Some(c) = chars.next() {
            match c {
                '%' => {
                    let piece = match chars.next() {
                        Some('k') => Piece::Key,
                        Some('v') => Piece::Value,
                        Some('p') => Piece::Partition,
                        Some('o') => Piece::Offset,
                        Some('t') => Piece::Timestamp,
                        Some('%') => {
                            lit.push(b'%');
                            continue;
                        }
                        other => {
                            return Err(format!(
                                "format {s:?}: unknown directive %{}; use %k %v %p %o %t or %%",
                                other.map(String::from).unwrap_or_default()
                            ));
                        }
                    };
                    if !lit.is_empty() {
                        pieces.push(Piece::Literal(std::mem::take(&mut lit)));
                    }
                    pieces.push(piece);
                }
                '\\' => match chars.next() {
                    Some('n') => lit.push(b'\n'),
                    Some('t') => lit.push(b'\t'),
                    Some('\\') => lit.push(b'\\'),
                    other => {
                        return Err(format!(
                            "format {s:?}: unknown escape \\{}; use \\n, \\t or \\\\",
                            other.map(String::from).unwrap_or_default()
                        ));
                    }
                },
                c => {
                    let mut buf = [0; 4];
                    lit.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
            }
        }
        if !lit.is_empty() {
            pieces.push(Piece::Literal(lit));
        }
        Ok(Format(pieces))
    }
}

impl Format {
    /// Appends the formatted record to `out`. Keys and values are written as raw bytes; a null
    /// one prints as nothing.
    pub fn write(&self, r: &ConsumerRecord, out: &mut Vec<u8>) {
        for p in &self.0 {
            match p {
                Piece::Literal(l) => out.extend_from_slice(l),
                Piece::Key => out.extend_from_slice(r.key.as_deref().unwrap_or_default()),
                Piece::Value => out.extend_from_slice(r.value.as_deref().unwrap_or_default()),
                Piece::Partition => out.extend_from_slice(r.partition.to_string().as_bytes()),
                Piece::Offset => out.extend_from_slice(r.offset.to_string().as_bytes()),
                Piece::Timestamp => out.extend_from_slice(r.timestamp.to_string().as_bytes()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn record() -> ConsumerRecord {
        ConsumerRecord {
            topic: "t".into(),
            partition: 3,
            offset: 42,
            timestamp: 1700,
            key: Some(Bytes::from_static(b"k1")),
            value: Some(Bytes::from_static(b"hello")),
            headers: vec![],
        }
    }

    #[test]
    fn formats_like_kcat() {
        let f: Format = "%k=%v\\t%p:%o@%t 100%%\\n".parse().unwrap();
        let mut out = Vec::new();
        f.write(&record(), &mut out);
        assert_eq!(out, b"k1=hello\t3:42@1700 100%\n");
        let f: Format = "%v\\n".parse().unwrap();
        let mut out = Vec::new();
        f.write(
            &ConsumerRecord {
                key: None,
                ..record()
            },
            &mut out,
        );
        assert_eq!(out, b"hello\n");
    }

    #[test]
    fn bad_directives_are_refused() {
        assert!("%x".parse::<Format>().is_err());
        assert!("\\q".parse::<Format>().is_err());
        assert!("%".parse::<Format>().is_err());
    }
}
