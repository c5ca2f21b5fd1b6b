//! Source connector: polls a URL for new items. It GETs `URL?after=CURSOR` (no `after` at
//! first); the answer's body holds one item per line (each becomes a record value, no key) and
//! its `sluice-cursor` header the cursor of the next page (absent: no new cursor yet). The
//! checkpoint is the page's cursor and how many of its lines were returned, so a restart asks
//! for the same page and skips those — the same records again, as the host's exactly-once
//! replay needs, from a server that answers the same page for the same cursor.
//!
//! Settings: `url` (required, `http://host[:port]/path`; its host granted in `http_hosts`).

use std::collections::VecDeque;

use sluice_plugin::{BatchBuilder, Config, Error, PARTITION_UNSET, Result, Source};
use wasi::http::outgoing_handler;
use wasi::http::types::{Fields, Method, OutgoingBody, OutgoingRequest, Scheme};

struct HttpSource {
    scheme: Scheme,
    authority: String,
    path: String,
    /// The cursor of the page being read (empty: the first page).
    cursor: String,
    /// Lines of that page already returned.
    taken: usize,
    /// The rest of that page, once fetched, and the next page's cursor.
    page: Option<(VecDeque<Vec<u8>>, Option<String>)>,
}

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
    Ok((scheme, authority.to_owned(), path.to_owned()))
}

impl HttpSource {
    /// GETs the page at `self.cursor`: its lines and the next cursor.
    fn fetch(&self) -> Result<(VecDeque<Vec<u8>>, Option<String>)> {
        let request = OutgoingRequest::new(Fields::new());
        let path = if self.cursor.is_empty() {
            self.path.clone()
        } else {
            format!("{}?after={}", self.path, self.cursor)
        };
        let set = |r: std::result::Result<(), ()>, what: &str| {
            r.map_err(|()| Error::msg(format!("the request's {what} was refused")))
        };
        set(request.set_method(&Method::Get), "method")?;
        set(request.set_scheme(Some(&self.scheme)), "scheme")?;
        set(request.set_authority(Some(&self.authority)), "host")?;
        set(request.set_path_with_query(Some(&path)), "path")?;
        let body = request
            .body()
            .map_err(|()| Error::msg("the request has no body"))?;
        let response = outgoing_handler::handle(request, None)
            .map_err(|e| Error::msg(format!("GET {}{path}: {e:?}", self.authority)))?;
        OutgoingBody::finish(body, None)
            .map_err(|e| Error::msg(format!("GET {}{path}: {e:?}", self.authority)))?;
        response.subscribe().block();
        let answer = response
            .get()
            .ok_or_else(|| Error::msg("no answer"))?
            .map_err(|()| Error::msg("the answer was taken twice"))?
            .map_err(|e| Error::msg(format!("GET {}{path}: {e:?}", self.authority)))?;
        let status = answer.status();
        if !(200..300).contains(&status) {
            return Err(Error::msg(format!(
                "GET {}{path} answered HTTP {status}",
                self.authority
            )));
        }
        let next = answer
            .headers()
            .get("sluice-cursor")
            .first()
            .map(|v| String::from_utf8_lossy(v).trim().to_owned())
            .filter(|c| !c.is_empty());
        let incoming = answer
            .consume()
            .map_err(|()| Error::msg("the answer has no body"))?;
        let stream = incoming
            .stream()
            .map_err(|()| Error::msg("the answer's body cannot be read"))?;
        let mut bytes = Vec::new();
        loop {
            match stream.blocking_read(64 << 10) {
                Ok(chunk) => bytes.extend_from_slice(&chunk),
                Err(wasi::io::streams::StreamError::Closed) => break,
                Err(e) => return Err(Error::msg(format!("reading the answer: {e:?}"))),
            }
            if bytes.len() > 16 << 20 {
                return Err(Error::msg("a page of more than 16 MiB"));
            }
        }
        let lines = bytes
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(<[u8]>::to_vec)
            .collect();
        Ok((lines, next))
    }
}

impl Source for HttpSource {
    fn open(config: &Config, checkpoint: Option<&[u8]>) -> Result<Self> {
        let (scheme, authority, path) = parse_url(&config.require("url")?)?;
        let (taken, cursor) = match checkpoint {
            None => (0, String::new()),
            Some(c) => {
                let text = String::from_utf8_lossy(c);
                let (taken, cursor) = text
                    .split_once(':')
                    .ok_or_else(|| Error::msg("not a checkpoint of this source"))?;
                let taken = taken
                    .parse()
                    .map_err(|_| Error::msg("not a checkpoint of this source"))?;
                (taken, cursor.to_owned())
            }
        };
        Ok(HttpSource {
            scheme,
            authority,
            path,
            cursor,
            taken,
            page: None,
        })
    }

    fn poll(&mut self, max_records: u32, output: &mut BatchBuilder) -> Result<()> {
        if self.page.is_none() {
            let (mut lines, next) = self.fetch()?;
            // After a restart: the lines of this page returned before it.
            for _ in 0..self.taken.min(lines.len()) {
                lines.pop_front();
            }
            self.page = Some((lines, next));
        }
        let (lines, next) = self.page.as_mut().expect("fetched above");
        let mut n = 0;
        while n < max_records {
            let Some(line) = lines.pop_front() else { break };
            output.push_parts(None, Some(&line), [], 0, PARTITION_UNSET, 0);
            self.taken += 1;
            n += 1;
        }
        if lines.is_empty() {
            // The page is done: the next poll asks for the next one (or this one again, when
            // the server gave no new cursor yet, for lines added to it).
            if let Some(next) = next.take() {
                self.cursor = next;
                self.taken = 0;
            }
            self.page = None;
        }
        Ok(())
    }

    fn checkpoint(&self) -> Result<Vec<u8>> {
        Ok(format!("{}:{}", self.taken, self.cursor).into_bytes())
    }
}

sluice_plugin::export_source!(HttpSource);
