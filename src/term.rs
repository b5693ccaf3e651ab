//! stderr shared by log lines and live displays (the login's spinner, `--once`'s progress
//! table). A live display is redrawn in place at the bottom of the terminal, its cursor resting
//! at the end of its last line; a log line written then would run into it ("⠙ Waiting for the
//! sign-in… 2026-… [INFO ]: authorization response received"), and the next redraw's "cursor
//! up" would climb into the log line. So both go through one [`LiveArea`]: a log line first
//! clears the display, then is written on a clean line, and the display draws itself again at its
//! next tick (every 120–200 ms).

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex};

/// The live display at the bottom of one output: how many lines it occupies now. Writers lock
/// it for the whole of a write, so a frame and a log line never interleave.
#[derive(Debug, Default)]
pub struct LiveArea {
    drawn: Mutex<usize>,
}

/// The live area of this process's stderr.
pub fn stderr_area() -> Arc<LiveArea> {
    static AREA: LazyLock<Arc<LiveArea>> = LazyLock::new(Arc::default);
    Arc::clone(&AREA)
}

impl LiveArea {
    /// Replaces the display with `lines` (no trailing newline: the cursor rests after the last).
    pub fn draw(&self, out: &mut dyn Write, lines: &[String]) {
        let mut drawn = self.drawn.lock().unwrap_or_else(|p| p.into_inner());
        Self::draw_locked(out, &mut drawn, lines);
    }

    fn draw_locked(out: &mut dyn Write, drawn: &mut usize, lines: &[String]) {
        let mut buf = String::new();
        // The cursor rests at the end of the previous frame's last line.
        if *drawn > 0 {
            buf.push('\r');
            if *drawn > 1 {
                buf.push_str(&format!("\x1b[{}A", *drawn - 1));
            }
        }
        for (i, l) in lines.iter().enumerate() {
            if i > 0 {
                buf.push('\n');
            }
            buf.push_str("\x1b[2K");
            buf.push_str(l);
        }
        // A shorter frame than the last: clear what is left below it.
        if lines.len() < *drawn {
            buf.push_str("\x1b[J");
        }
        *drawn = lines.len();
        // Errors (a closed stderr) are ignored: a display is never worth failing for.
        let _ = out.write_all(buf.as_bytes());
        let _ = out.flush();
    }

    /// [`LiveArea::draw`], unless `stopped` is set (checked under the area's lock, which
    /// [`LiveArea::stop_and_clear`] takes): false when stopped, and nothing was drawn.
    pub fn draw_unless(&self, out: &mut dyn Write, lines: &[String], stopped: &AtomicBool) -> bool {
        let mut drawn = self.drawn.lock().unwrap_or_else(|p| p.into_inner());
        if stopped.load(Ordering::SeqCst) {
            return false;
        }
        Self::draw_locked(out, &mut drawn, lines);
        true
    }

    /// Sets `stopped` and clears the display, under the area's lock.
    pub fn stop_and_clear(&self, out: &mut dyn Write, stopped: &AtomicBool) {
        let mut drawn = self.drawn.lock().unwrap_or_else(|p| p.into_inner());
        stopped.store(true, Ordering::SeqCst);
        Self::clear_locked(out, &mut drawn);
        let _ = out.flush();
    }

    /// Removes the display (its lines are cleared, the cursor goes to where it started).
    pub fn clear(&self, out: &mut dyn Write) {
        let mut drawn = self.drawn.lock().unwrap_or_else(|p| p.into_inner());
        Self::clear_locked(out, &mut drawn);
        let _ = out.flush();
    }

    /// Leaves the display on screen as ordinary output and moves below it: the next frame
    /// starts afresh.
    pub fn keep(&self, out: &mut dyn Write) {
        let mut drawn = self.drawn.lock().unwrap_or_else(|p| p.into_inner());
        if *drawn > 0 {
            let _ = out.write_all(b"\n");
            let _ = out.flush();
            *drawn = 0;
        }
    }

    /// Writes `text` (whole lines) above the display: the display is cleared first and draws
    /// itself again at its next frame.
    pub fn write_above(&self, out: &mut dyn Write, text: &[u8]) -> io::Result<()> {
        let mut drawn = self.drawn.lock().unwrap_or_else(|p| p.into_inner());
        Self::clear_locked(out, &mut drawn);
        out.write_all(text)?;
        out.flush()
    }

    fn clear_locked(out: &mut dyn Write, drawn: &mut usize) {
        if *drawn == 0 {
            return;
        }
        let mut buf = String::from("\r");
        if *drawn > 1 {
            buf.push_str(&format!("\x1b[{}A", *drawn - 1));
        }
        buf.push_str("\x1b[J");
        let _ = out.write_all(buf.as_bytes());
        *drawn = 0;
    }

    /// Lines drawn now (for tests).
    pub fn lines_drawn(&self) -> usize {
        *self.drawn.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The log's stderr writer ([`tracing_subscriber::fmt::MakeWriter`]): every line goes above
/// the live display of stderr.
#[derive(Debug, Clone, Copy, Default)]
pub struct StderrAboveLive;

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for StderrAboveLive {
    type Writer = StderrAboveLive;
    fn make_writer(&'a self) -> Self::Writer {
        StderrAboveLive
    }
}

impl Write for StderrAboveLive {
    /// The formatter hands over a whole event (its lines) in one call.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // Always the area's lock first, then stderr's (inside each write): one order for
        // every writer, so no two wait on each other.
        stderr_area().write_above(&mut io::stderr(), buf)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A log line written while a spinner is on screen starts on a cleared line, not after the
    /// spinner's text; the spinner's next frame is drawn below the log line, not over it.
    #[test]
    fn a_log_line_clears_the_live_display_before_it_is_written() {
        let area = LiveArea::default();
        let mut out = Vec::new();
        area.draw(
            &mut out,
            &["⠋ Waiting for the sign-in in the browser... 1 s".into()],
        );
        area.write_above(
            &mut out,
            b"2026-01-01 [INFO ]: authorization response received\n",
        )
        .expect("write");
        area.draw(
            &mut out,
            &["⠙ Waiting for the sign-in in the browser... 2 s".into()],
        );
        let text = String::from_utf8(out).expect("utf-8");
        let log_at = text.find("2026-01-01").expect("the log line");
        // Right before the log line: back to the start of the line and clear to the end.
        assert!(
            text[..log_at].ends_with("\r\x1b[J"),
            "the spinner's line is cleared first: {text:?}"
        );
        // The next frame starts on the fresh line below the log line: no cursor movement up.
        let after = &text[log_at..];
        let next_frame = after.find('⠙').expect("the next frame");
        assert!(!after[..next_frame].contains("\x1b[1A") && !after[..next_frame].contains('\r'));
        assert_eq!(area.lines_drawn(), 1);
    }

    /// A multi-line frame (the progress table) is cleared whole, the cursor moved up over it.
    #[test]
    fn a_table_is_cleared_whole_and_redrawn_from_scratch() {
        let area = LiveArea::default();
        let mut out = Vec::new();
        area.draw(&mut out, &["a".into(), "b".into(), "c".into()]);
        area.write_above(&mut out, b"log\n").expect("write");
        let text = String::from_utf8(out.clone()).expect("utf-8");
        assert!(text.ends_with("c\r\x1b[2A\x1b[Jlog\n"), "{text:?}");
        assert_eq!(area.lines_drawn(), 0);
        // Nothing drawn: a log line is written as is.
        let mut plain = Vec::new();
        LiveArea::default()
            .write_above(&mut plain, b"log\n")
            .expect("write");
        assert_eq!(plain, b"log\n");
    }
}
