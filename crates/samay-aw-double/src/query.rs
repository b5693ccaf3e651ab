//! The part of aw-server-rust's query API (`POST /api/0/query/`) the sync uses: for each of
//! many timeperiods in one request, `sum_durations(query_bucket("<bucket>"))`.
//!
//! The request is `{"query": ["stmt;", ...], "timeperiods": ["<start>/<end>", ...]}`; the
//! statements (joined) run once per timeperiod and the answer is a JSON array with the value of
//! `RETURN` for each. The double understands assignments of string literals, variables and
//! the calls `query_bucket(bucket)` and `sum_durations(events)`; anything else is a 400 that
//! names what it does not support, so a test can never pass by a query being silently
//! misread.

use chrono::DateTime;

/// A parsed query: the bucket whose durations `RETURN` sums.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SumQuery {
    pub bucket: String,
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Ident(String),
    Str(String),
    Punct(char),
}

fn tokens(text: &str) -> Result<Vec<Token>, String> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c.is_ascii_alphabetic() || c == '_' {
            let mut word = String::new();
            while let Some(&c) = chars.peek() {
                if c.is_ascii_alphanumeric() || c == '_' {
                    word.push(c);
                    chars.next();
                } else {
                    break;
                }
            }
            out.push(Token::Ident(word));
        } else if c == '"' || c == '\'' {
            chars.next();
            let mut s = String::new();
            loop {
                match chars.next() {
                    None => return Err("unterminated string".into()),
                    Some('\\') => match chars.next() {
                        Some(e) => s.push(e),
                        None => return Err("unterminated string".into()),
                    },
                    Some(q) if q == c => break,
                    Some(o) => s.push(o),
                }
            }
            out.push(Token::Str(s));
        } else if "=;(),".contains(c) {
            out.push(Token::Punct(c));
            chars.next();
        } else {
            return Err(format!("unexpected character {c:?}"));
        }
    }
    Ok(out)
}

/// A value while interpreting: a bucket's events (not read yet) or a string.
#[derive(Debug, Clone, PartialEq)]
enum Val {
    Str(String),
    Events(String),
    Sum(String),
}

struct Parser {
    toks: Vec<Token>,
    at: usize,
}

impl Parser {
    fn next(&mut self) -> Option<Token> {
        let t = self.toks.get(self.at).cloned();
        self.at += 1;
        t
    }

    fn peek(&self) -> Option<&Token> {
        self.toks.get(self.at)
    }

    fn expect(&mut self, c: char) -> Result<(), String> {
        match self.next() {
            Some(Token::Punct(p)) if p == c => Ok(()),
            other => Err(format!("expected '{c}', found {other:?}")),
        }
    }

    fn expr(&mut self, vars: &[(String, Val)]) -> Result<Val, String> {
        match self.next() {
            Some(Token::Str(s)) => Ok(Val::Str(s)),
            Some(Token::Ident(name)) => {
                if self.peek() != Some(&Token::Punct('(')) {
                    return vars
                        .iter()
                        .rev()
                        .find(|(n, _)| *n == name)
                        .map(|(_, v)| v.clone())
                        .ok_or_else(|| format!("unknown variable {name}"));
                }
                self.expect('(')?;
                let arg = self.expr(vars)?;
                self.expect(')')?;
                match (name.as_str(), arg) {
                    ("query_bucket", Val::Str(b)) => Ok(Val::Events(b)),
                    ("sum_durations", Val::Events(b)) => Ok(Val::Sum(b)),
                    (f, a) => Err(format!(
                        "the aw-server double supports only query_bucket(\"bucket\") and \
                         sum_durations(events), not {f}({a:?})"
                    )),
                }
            }
            other => Err(format!("expected an expression, found {other:?}")),
        }
    }
}

/// Parses the joined statements; `Err` is the 400's message.
pub fn parse(statements: &[String]) -> Result<SumQuery, String> {
    let text = statements.join("\n");
    let mut p = Parser {
        toks: tokens(&text)?,
        at: 0,
    };
    let mut vars: Vec<(String, Val)> = Vec::new();
    while p.peek().is_some() {
        let name = match p.next() {
            Some(Token::Ident(n)) => n,
            other => return Err(format!("expected a statement, found {other:?}")),
        };
        p.expect('=')?;
        let value = p.expr(&vars)?;
        vars.push((name, value));
        match p.peek() {
            Some(Token::Punct(';')) => {
                p.next();
            }
            None => {}
            other => return Err(format!("expected ';', found {other:?}")),
        }
    }
    match vars.iter().rev().find(|(n, _)| n == "RETURN") {
        Some((_, Val::Sum(bucket))) => Ok(SumQuery {
            bucket: bucket.clone(),
        }),
        Some((_, v)) => Err(format!(
            "the aw-server double can only RETURN sum_durations(...), not {v:?}"
        )),
        None => Err("the query has no RETURN".into()),
    }
}

/// `"<start>/<end>"` as nanoseconds (RFC 3339 each, as aw-server-rust parses timeperiods).
pub fn period(text: &str) -> Result<(i64, i64), String> {
    let (a, b) = text
        .split_once('/')
        .ok_or_else(|| format!("timeperiod {text:?} is not <start>/<end>"))?;
    let ns = |t: &str| {
        DateTime::parse_from_rfc3339(t)
            .map_err(|e| format!("timeperiod {text:?}: {e}"))?
            .timestamp_nanos_opt()
            .ok_or_else(|| format!("timeperiod {text:?} is outside 1677-2262"))
    };
    Ok((ns(a)?, ns(b)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Result<SumQuery, String> {
        parse(&[s.to_string()])
    }

    #[test]
    fn the_sums_the_sync_sends_parse() {
        assert_eq!(
            q(r#"RETURN = sum_durations(query_bucket("aw-watcher-window_h"));"#),
            Ok(SumQuery {
                bucket: "aw-watcher-window_h".into()
            })
        );
        assert_eq!(
            parse(&[
                "events = query_bucket('b\\'q');".into(),
                "RETURN = sum_durations(events);".into()
            ]),
            Ok(SumQuery {
                bucket: "b'q".into()
            })
        );
    }

    #[test]
    fn anything_else_is_refused_by_name() {
        assert!(q("RETURN = query_bucket(\"b\");")
            .unwrap_err()
            .contains("RETURN"));
        assert!(q("RETURN = flood(query_bucket(\"b\"));")
            .unwrap_err()
            .contains("flood"));
        assert!(q("x = sum_durations(query_bucket(\"b\"));")
            .unwrap_err()
            .contains("no RETURN"));
        assert!(q("RETURN = sum_durations(query_bucket(\"b\")").is_err());
        assert!(period("2024-01-01T00:00:00Z").is_err());
        assert_eq!(
            period("1970-01-01T00:00:01Z/1970-01-01T00:00:02Z"),
            Ok((1_000_000_000, 2_000_000_000))
        );
    }
}
