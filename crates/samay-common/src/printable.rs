//! The one filter every piece of remote text passes before it reaches a terminal or a log: an
//! upstream's `error`, a provider's `error` / `error_description`, the signed-in user's name,
//! aw-server's messages, bucket ids and host names.
//!
//! Such text is written by someone else. Raw, an escape sequence in it can clear the screen,
//! retitle the terminal window, rewrite the line before it (`\r`), fake a log line of its own
//! (`\n`), or — on terminals that honour them — inject keystrokes or hyperlinks; a bidi override
//! makes the text read differently than it is. So every control character (C0, DEL, C1) and
//! every bidi control is written as a visible `\u{…}` escape instead: the reader still sees that
//! something odd was sent, and nothing is lost from the message.

use std::borrow::Cow;
use std::fmt::Write as _;

/// `text` with every character that could act on a terminal written as `\u{hex}`; borrowed
/// when there is none (the common case costs one scan, no allocation).
pub fn printable(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_unsafe) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if is_unsafe(c) {
            // Writing to a String cannot fail.
            let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Control characters (`\t`, `\n` and `\r` too: a message is one line) and the Unicode bidi
/// controls (U+061C, U+200E, U+200F, U+202A–U+202E, U+2066–U+2069).
fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_sequences_become_visible_escapes() {
        assert_eq!(
            printable("\u{1b}[2J\u{1b}]0;pwned\u{7}"),
            "\\u{1b}[2J\\u{1b}]0;pwned\\u{7}"
        );
        assert_eq!(
            printable("a\r\nb\tc\u{7f}\u{9b}d"),
            "a\\u{d}\\u{a}b\\u{9}c\\u{7f}\\u{9b}d"
        );
        assert_eq!(printable("abc\u{202e}cba"), "abc\\u{202e}cba");
    }

    #[test]
    fn plain_text_is_borrowed_unchanged() {
        for text in ["", "alice", "naïve café 😀", "a \"quoted\" \\ path"] {
            assert!(matches!(printable(text), Cow::Borrowed(t) if t == text));
        }
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(crate::proptest_config(512))]

        /// Whatever comes in, nothing that acts on a terminal comes out, and the output reads
        /// back as the input: each character in order, itself or its `\u{hex}` escape.
        #[test]
        fn output_has_no_control_and_reads_back_as_the_input(text in any::<String>()) {
            let out = printable(&text);
            prop_assert!(!out.chars().any(is_unsafe), "{:?}", out);
            let mut rest: &str = &out;
            for c in text.chars() {
                let escaped = format!("\\u{{{:x}}}", u32::from(c));
                rest = match (is_unsafe(c), rest.strip_prefix(escaped.as_str()), rest.strip_prefix(c)) {
                    (true, Some(after), _) | (false, _, Some(after)) => after,
                    _ => return Err(TestCaseError::fail(format!("{c:?} not at {rest:?}"))),
                };
            }
            prop_assert_eq!(rest, "");
        }
    }
}
