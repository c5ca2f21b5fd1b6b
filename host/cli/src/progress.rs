//! Progress of long CLI work (producing a large file, consuming to a file, creating a topic
//! of many partitions), drawn on stderr with indicatif and only when stderr is a terminal: a
//! script, a pipe or a log file sees nothing of it.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Whether progress is drawn at all.
fn shown() -> bool {
    std::io::stderr().is_terminal()
}

/// A bar over `total` bytes (a file on standard input), or a counter when the total is
/// unknown (a pipe). Hidden unless stderr is a terminal.
pub fn bytes_or_count(total: Option<u64>, what: &str) -> ProgressBar {
    if !shown() {
        return ProgressBar::hidden();
    }
    let bar = match total {
        Some(total) => ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr())
            .with_style(
                ProgressStyle::with_template(
                    "{msg} [{bar:40}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})",
                )
                .expect("a valid template")
                .progress_chars("=> "),
            ),
        None => spinner_bar(),
    };
    bar.set_message(what.to_string());
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// A spinner with a message and a count of `unit`s. Hidden unless `show` and stderr is a
/// terminal.
pub fn spinner(what: &str, show: bool) -> ProgressBar {
    if !show || !shown() {
        return ProgressBar::hidden();
    }
    let bar = spinner_bar();
    bar.set_message(what.to_string());
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

fn spinner_bar() -> ProgressBar {
    ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()).with_style(
        ProgressStyle::with_template("{spinner} {msg} {human_pos} ({elapsed})")
            .expect("a valid template"),
    )
}
