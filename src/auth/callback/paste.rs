//! Paste-back (`--no-browser`): when the browser runs where our loopback port is unreachable
//! (SSH, a container, another machine), the redirect fails to load there, and the user copies
//! the address from its address bar into our terminal — gcloud's and rclone's way out of the
//! headless case. A pasted URL goes through the same validation as a loopback callback.

use std::time::Duration;

use tokio::io::{AsyncBufRead, AsyncBufReadExt};
use tokio::sync::{mpsc, oneshot, watch};
use url::Url;

use super::{same_endpoint, CallbackSource, Candidate, Params, Responder, MAX_REQUEST_BYTES};

pub(super) fn spawn(
    mut input: Box<dyn AsyncBufRead + Send + Unpin>,
    expected: Url,
    queue: mpsc::Sender<Candidate>,
    mut shutdown: watch::Receiver<bool>,
    hold: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let line = tokio::select! {
                _ = super::stopped(&mut shutdown) => break,
                line = read_line(&mut input) => line,
            };
            let line = match line {
                Ok(Some(line)) => line,
                Ok(None) => {
                    tracing::debug!("standard input closed; no more pasted URLs");
                    break;
                }
                Err(e) => {
                    tracing::debug!("reading a pasted URL failed: {e}");
                    break;
                }
            };
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let url = match Url::parse(line) {
                Ok(url) if same_endpoint(&url, &expected) => url,
                _ => {
                    eprintln!(
                        "That is not the address the sign-in sent the browser to. Paste the whole address from the browser's address bar; it starts with {expected}?"
                    );
                    continue;
                }
            };
            tracing::debug!("a sign-in callback URL was pasted");
            let (reply_tx, reply_rx) = oneshot::channel();
            // Nothing to flush for a paste: the sender goes away at once.
            let (_, written_rx) = watch::channel(());
            let candidate = Candidate {
                source: CallbackSource::Paste,
                params: Params::from_query(url.query()),
                responder: Responder::new(reply_tx, written_rx),
            };
            if queue.send(candidate).await.is_err() {
                break;
            }
            // The success page is for a browser; the login itself reports success.
            if let Ok(Ok(page)) = tokio::time::timeout(hold, reply_rx).await {
                if !page.is_success() {
                    eprintln!("{}", page.plain());
                }
            }
        }
    })
}

/// Standard input as an async reader. A plain thread does the blocking reads (tokio's own
/// stdin needs a feature this crate does not enable, and would hold up runtime shutdown while
/// a read is pending); it ends with the process or at end of input.
pub(super) fn stdin() -> Box<dyn AsyncBufRead + Send + Unpin> {
    use std::io::Read;
    use tokio::io::AsyncWriteExt;
    let (mut writer, reader) = tokio::io::duplex(MAX_REQUEST_BYTES);
    let runtime = tokio::runtime::Handle::current();
    let spawned = std::thread::Builder::new()
        .name("paste-stdin".into())
        .spawn(move || {
            let mut buf = [0u8; 4096];
            let mut stdin = std::io::stdin();
            loop {
                let n = match stdin.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                if runtime.block_on(writer.write_all(&buf[..n])).is_err() {
                    break; // the login is over; nobody reads any more
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!("cannot read pasted URLs from standard input: {e}");
    }
    Box::new(tokio::io::BufReader::new(reader))
}

/// One line of at most [`MAX_REQUEST_BYTES`] (newline included); a longer one is discarded up
/// to its end and reported as empty — also the last one, without a newline, so an over-long
/// paste is never cut to whatever fitted. `None` at end of input.
async fn read_line(
    input: &mut (dyn AsyncBufRead + Send + Unpin),
) -> std::io::Result<Option<String>> {
    let mut line = Vec::new();
    loop {
        let buf = input.fill_buf().await?;
        if buf.is_empty() {
            if line.len() > MAX_REQUEST_BYTES {
                return Ok(Some(String::new()));
            }
            return Ok((!line.is_empty()).then(|| String::from_utf8_lossy(&line).into_owned()));
        }
        let (chunk, done) = match buf.iter().position(|b| *b == b'\n') {
            Some(i) => (&buf[..=i], true),
            None => (buf, false),
        };
        let n = chunk.len();
        if line.len() <= MAX_REQUEST_BYTES {
            line.extend_from_slice(chunk);
        }
        input.consume(n);
        if done {
            if line.len() > MAX_REQUEST_BYTES {
                line.clear();
            }
            return Ok(Some(String::from_utf8_lossy(&line).into_owned()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The lines `read_line` must return for `input`: each line, newline included, of at most
    /// `MAX_REQUEST_BYTES`, lossily decoded; a longer one as "" (discarded); the same rule for
    /// a last line without a newline.
    fn model(input: &[u8]) -> Vec<String> {
        let mut lines = Vec::new();
        for segment in input.split_inclusive(|b| *b == b'\n') {
            if segment.len() > MAX_REQUEST_BYTES {
                lines.push(String::new());
            } else {
                lines.push(String::from_utf8_lossy(segment).into_owned());
            }
        }
        lines
    }

    fn read_all(input: &[u8], capacity: usize) -> Vec<String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let mut reader =
                tokio::io::BufReader::with_capacity(capacity, std::io::Cursor::new(input.to_vec()));
            let mut lines = Vec::new();
            while let Some(line) = read_line(&mut reader).await.expect("in-memory read") {
                lines.push(line);
            }
            lines
        })
    }

    /// Line lengths around the limit, and short ones with any bytes (invalid UTF-8, `\r`, NUL).
    fn segment() -> impl Strategy<Value = Vec<u8>> {
        let short = proptest::collection::vec(
            any::<u8>().prop_filter("no newline", |b| *b != b'\n'),
            0..80,
        );
        let long = (
            prop_oneof![
                Just(MAX_REQUEST_BYTES - 1),
                Just(MAX_REQUEST_BYTES),
                Just(MAX_REQUEST_BYTES + 1),
                Just(2 * MAX_REQUEST_BYTES + 7),
            ],
            any::<u8>(),
        )
            .prop_map(|(n, b)| vec![if b == b'\n' { b'x' } else { b }; n]);
        prop_oneof![4 => short, 1 => long]
    }

    proptest! {
        #![proptest_config(crate::proptest_config(64))]

        #[test]
        fn pasted_lines_are_bounded_and_independent_of_buffering(
            segments in proptest::collection::vec((segment(), any::<bool>()), 0..6),
            capacity in prop_oneof![1usize..16, 16usize..5000],
        ) {
            let mut input = Vec::new();
            for (bytes, newline) in &segments {
                input.extend_from_slice(bytes);
                if *newline {
                    input.push(b'\n');
                }
            }
            let (got, want) = (read_all(&input, capacity), model(&input));
            // Lengths and short prefixes: the lines themselves can be 32 KiB.
            let sketch = |lines: &[String]| {
                lines.iter().map(|l| (l.len(), l.chars().take(12).collect::<String>())).collect::<Vec<_>>()
            };
            prop_assert!(got == want, "got {:?}, want {:?}", sketch(&got), sketch(&want));
        }
    }

    /// Fuzzing found it: a last line without a newline skipped the length check, so a pasted
    /// URL longer than the limit came back cut at a buffer boundary (a truncated code could
    /// be accepted) instead of being discarded like the same line with a newline.
    #[test]
    fn an_overlong_last_line_is_discarded_like_any_other() {
        let url = format!(
            "http://127.0.0.1:1/callback?state=s&code=c{}",
            "x".repeat(MAX_REQUEST_BYTES)
        );
        for input in [url.clone(), format!("{url}\n")] {
            let lines = read_all(input.as_bytes(), 4096);
            assert!(
                lines == [""],
                "{:?}",
                lines.iter().map(String::len).collect::<Vec<_>>()
            );
        }
    }
}
