//! Sink connector: POSTs each batch of records to a URL as JSON lines (`application/x-ndjson`),
//! one object per record: `{"topic", "partition", "offset", "timestamp", "key", "value"}` (key
//! and value as UTF-8 text, lossily; `null` when absent). The URL's host must be granted
//! (`[grants] http_hosts`).
//!
//! Settings: `url` (required, `http://host[:port]/path` or `https://...`).
//!
//! A 2xx answer means written. A 4xx answer means the records are refused for good: a permanent
//! error, so the host finds the refused ones and sends them to the dead-letter topic. Anything
//! else (5xx, no connection, a timeout) is a plain error: the task restarts with backoff from
//! its last commit and the records come again (at least once).

use sluice_plugin::{BatchReader, Config, Error, Result, Sink};
use wasi::http::outgoing_handler;
use wasi::http::types::{Fields, Method, OutgoingBody, OutgoingRequest, Scheme};

struct HttpSink {
    scheme: Scheme,
    authority: String,
    path: String,
}

/// `http[s]://authority/path` split.
fn parse_url(url: &str) -> Result<(Scheme, String, String)> {
    let (scheme, rest) = if let Some(rest) = url.strip_prefix("http://") {
        (Scheme::Http, rest)
    } else if let Some(rest) = url.strip_prefix("https://") {
        (Scheme::Https, rest)
    } else {
        return Err(Error::msg(format!(
            "url {url:?}: expected http://host[:port]/path or https://..."
        )));
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return Err(Error::msg(format!("url {url:?} has no host")));
    }
    Ok((scheme, authority.to_owned(), path.to_owned()))
}

/// A JSON string literal of `bytes` (as UTF-8, lossily).
fn json_string(out: &mut String, bytes: &[u8]) {
    out.push('"');
    for c in String::from_utf8_lossy(bytes).chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

impl HttpSink {
    /// POSTs `body`; the answer's status.
    fn post(&self, body: &[u8]) -> Result<u16> {
        let headers = Fields::new();
        headers
            .append("content-type", b"application/x-ndjson")
            .map_err(|e| Error::msg(format!("content-type header: {e:?}")))?;
        // A length, not chunks: every HTTP/1.1 server reads that.
        headers
            .append("content-length", body.len().to_string().as_bytes())
            .map_err(|e| Error::msg(format!("content-length header: {e:?}")))?;
        let request = OutgoingRequest::new(headers);
        let set = |r: std::result::Result<(), ()>, what: &str| {
            r.map_err(|()| Error::msg(format!("the request's {what} was refused")))
        };
        set(request.set_method(&Method::Post), "method")?;
        set(request.set_scheme(Some(&self.scheme)), "scheme")?;
        set(request.set_authority(Some(&self.authority)), "host")?;
        set(request.set_path_with_query(Some(&self.path)), "path")?;
        let outgoing = request
            .body()
            .map_err(|()| Error::msg("the request has no body"))?;
        let response = outgoing_handler::handle(request, None)
            .map_err(|e| Error::msg(format!("POST to {}: {e:?}", self.authority)))?;
        // Why a request failed: the answer's error (a refused host, no connection) says more
        // than the body stream closing under the writer.
        let failed = |what: String| {
            response.subscribe().block();
            match response.get() {
                Some(Ok(Err(e))) => Error::msg(format!("POST to {}: {e:?}", self.authority)),
                _ => Error::msg(what),
            }
        };
        let sent = (|| {
            let stream = outgoing
                .write()
                .map_err(|()| "the request body cannot be written".to_owned())?;
            for chunk in body.chunks(4096) {
                stream
                    .blocking_write_and_flush(chunk)
                    .map_err(|e| format!("sending to {}: {e:?}", self.authority))?;
            }
            Ok::<(), String>(())
        })();
        if let Err(what) = sent {
            return Err(failed(what));
        }
        OutgoingBody::finish(outgoing, None)
            .map_err(|e| failed(format!("sending to {}: {e:?}", self.authority)))?;
        response.subscribe().block();
        let answer = response
            .get()
            .ok_or_else(|| Error::msg("no answer"))?
            .map_err(|()| Error::msg("the answer was taken twice"))?
            .map_err(|e| Error::msg(format!("POST to {}: {e:?}", self.authority)))?;
        Ok(answer.status())
    }
}

impl Sink for HttpSink {
    fn open(config: &Config) -> Result<Self> {
        let (scheme, authority, path) = parse_url(&config.require("url")?)?;
        Ok(HttpSink {
            scheme,
            authority,
            path,
        })
    }

    fn write(&mut self, records: BatchReader<'_>) -> Result<()> {
        let mut lines = String::new();
        for r in records {
            let r = r.map_err(|e| Error::msg(format!("host sent a {e}")))?;
            let topic = r
                .headers()
                .find(|(k, _)| *k == "sluice.topic")
                .and_then(|(_, v)| v)
                .unwrap_or_default();
            lines.push_str("{\"topic\":");
            json_string(&mut lines, topic);
            lines.push_str(&format!(
                ",\"partition\":{},\"offset\":{},\"timestamp\":{},\"key\":",
                r.partition, r.offset, r.timestamp
            ));
            match r.key {
                Some(k) => json_string(&mut lines, k),
                None => lines.push_str("null"),
            }
            lines.push_str(",\"value\":");
            match r.value {
                Some(v) => json_string(&mut lines, v),
                None => lines.push_str("null"),
            }
            lines.push_str("}\n");
        }
        // One POST per write: a 4xx refuses exactly these records (nothing of them is kept).
        let status = self.post(lines.as_bytes())?;
        match status {
            200..=299 => Ok(()),
            400..=499 => Err(Error::permanent(format!(
                "{} answered HTTP {status}",
                self.authority
            ))),
            _ => Err(Error::msg(format!(
                "{} answered HTTP {status}; retrying later",
                self.authority
            ))),
        }
    }

    fn flush(&mut self) -> Result<()> {
        // Every write was sent and answered already.
        Ok(())
    }
}

sluice_plugin::export_sink!(HttpSink);
