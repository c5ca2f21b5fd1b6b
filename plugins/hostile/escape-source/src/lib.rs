//! TEST FIXTURE ONLY. A source connector that misbehaves on purpose, by its `mode` setting:
//!
//! - `probe`: on its first poll, tries everything a connector might try outside its grants and
//!   emits one record reporting what each attempt got: `inside` (reads the file of the setting
//!   `inside`, in a granted directory: the one thing that should work), `outside` (the file of
//!   the setting `outside`, not granted), `root` (lists `/`), `passwd` (`/etc/passwd`), `env`
//!   (how many environment variables it sees), `tcp` (a TCP connection to the setting `tcp`,
//!   an address something listens on) and `http` (a GET to the setting `http`, a host not
//!   granted). Nothing after that.
//! - `trap`: traps on every poll.
//! - `loop`: never returns from a poll.

use sluice_plugin::{BatchBuilder, Config, Error, PARTITION_UNSET, Result, Source};
use wasi::http::outgoing_handler;
use wasi::http::types::{Fields, OutgoingRequest, Scheme};

struct EscapeSource {
    mode: String,
    /// The settings `inside`, `outside`, `tcp` and `http`.
    targets: [String; 4],
    done: bool,
}

/// `read:N` (bytes) when `f` worked, else `denied`.
fn attempt<T>(r: std::io::Result<T>, size: impl Fn(&T) -> usize) -> String {
    match r {
        Ok(v) => format!("read:{}", size(&v)),
        Err(_) => "denied".to_owned(),
    }
}

/// A GET to `authority`: `reached` when an answer came, else why not.
fn http_get(authority: &str) -> String {
    let request = OutgoingRequest::new(Fields::new());
    if request.set_scheme(Some(&Scheme::Http)).is_err()
        || request.set_authority(Some(authority)).is_err()
        || request.set_path_with_query(Some("/")).is_err()
    {
        return "bad-request".to_owned();
    }
    let response = match outgoing_handler::handle(request, None) {
        Ok(r) => r,
        Err(e) => return format!("denied:{e:?}"),
    };
    response.subscribe().block();
    match response.get() {
        Some(Ok(Ok(_))) => "reached".to_owned(),
        Some(Ok(Err(e))) => format!("denied:{e:?}"),
        _ => "no-answer".to_owned(),
    }
}

impl EscapeSource {
    fn probe(&self) -> String {
        let [inside, outside, tcp, http] = &self.targets;
        let inside = attempt(std::fs::read(inside), Vec::len);
        let outside = attempt(std::fs::read(outside), Vec::len);
        let root = attempt(std::fs::read_dir("/"), |_| 0);
        let passwd = attempt(std::fs::read("/etc/passwd"), Vec::len);
        let env = std::env::vars().count();
        let tcp = match std::net::TcpStream::connect(tcp) {
            Ok(_) => "connected".to_owned(),
            Err(_) => "denied".to_owned(),
        };
        let http = http_get(http);
        format!(
            "inside={inside} outside={outside} root={root} passwd={passwd} env={env} tcp={tcp} http={http}"
        )
    }
}

impl Source for EscapeSource {
    fn open(config: &Config, checkpoint: Option<&[u8]>) -> Result<Self> {
        let mode = config.require("mode")?;
        if !["probe", "trap", "loop"].contains(&mode.as_str()) {
            return Err(Error::msg(format!("mode {mode:?}: probe, trap or loop")));
        }
        Ok(EscapeSource {
            mode,
            targets: ["inside", "outside", "tcp", "http"]
                .map(|k| config.get(k).unwrap_or_default()),
            done: checkpoint == Some(b"done"),
        })
    }

    fn poll(&mut self, _max_records: u32, output: &mut BatchBuilder) -> Result<()> {
        match self.mode.as_str() {
            "trap" => panic!("this fixture traps on purpose"),
            "loop" => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            _ if self.done => Ok(()),
            _ => {
                let report = self.probe();
                output.push_parts(None, Some(report.as_bytes()), [], 0, PARTITION_UNSET, 0);
                self.done = true;
                Ok(())
            }
        }
    }

    fn checkpoint(&self) -> Result<Vec<u8>> {
        Ok(if self.done {
            b"done".to_vec()
        } else {
            Vec::new()
        })
    }
}

sluice_plugin::export_source!(EscapeSource);
