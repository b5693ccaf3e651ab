//! A `samay-server` process started by a test, as an operator runs it.

use std::io::BufRead;
use std::process::{Child, Command, Stdio};

/// Spawns `cmd` (a `samay-server` command line the caller built), waits for its
/// `samay-server listening on URL` line and returns the child and that URL (without a trailing
/// `/`). The rest of its output is read and dropped, so it never blocks on a full pipe.
pub fn spawn_listening(mut cmd: Command) -> (Child, String) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .expect("start samay-server");
    let mut lines = std::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let line = lines
        .next()
        .unwrap_or_else(|| panic!("samay-server exited: {:?}", child.wait()))
        .expect("a line");
    let base = line
        .strip_prefix("samay-server listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .trim_end_matches('/')
        .to_string();
    std::thread::spawn(move || for _ in lines {});
    (child, base)
}
