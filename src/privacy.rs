//! Privacy controls from `[sync]`: which buckets are synced (`include_buckets`,
//! `exclude_buckets`), which data fields are dropped or replaced by a keyed hash (`redact`), and
//! the per-bucket fingerprint of those settings that lets the engine rescan a bucket whose
//! filters changed.
//!
//! Redaction is applied by the scanner before the event hash is computed, so the upstream only
//! ever sees redacted data and the dedupe works on exactly what was sent: an unchanged rule
//! re-sends nothing, a changed rule makes a new version of each affected event.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use serde_json::{Map, Value};

use crate::config::{ConfigError, RedactRule, SyncConfig};
use serde_json::value::RawValue;

use crate::state::hash::{canonical_json, check_depth, DataError};

/// A bucket-id pattern: `*` matches any run of characters (also none), `?` exactly one; every
/// other character matches itself, case-sensitively (bucket ids are case-sensitive).
///
/// Hand-written rather than `globset`: bucket ids are flat names (no path separators, so none of
/// globset's path semantics apply), two wildcards cover every real use ("aw-watcher-window_*",
/// "*_work-laptop"), and this is 30 lines against a regex engine pulled into the build. Brackets,
/// braces and backslashes are refused by [`Glob::new`] rather than taken literally, so a pattern
/// written for a richer glob dialect fails loudly instead of silently matching nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    pattern: Vec<char>,
    text: String,
}

impl Glob {
    /// `Err` says what is wrong, for a config message.
    pub fn new(pattern: &str) -> Result<Glob, String> {
        if pattern.is_empty() {
            return Err("an empty pattern matches nothing; remove it or use \"*\"".into());
        }
        if let Some(c) = pattern
            .chars()
            .find(|c| matches!(c, '[' | ']' | '{' | '}' | '\\'))
        {
            return Err(format!(
                "{pattern:?} contains {c:?}: only `*` (any characters) and `?` (one character) are wildcards; character classes, alternatives and escapes are not supported"
            ));
        }
        Ok(Glob {
            pattern: pattern.chars().collect(),
            text: pattern.to_string(),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Iterative matching with one backtrack point (the last `*`): linear in practice, at worst
    /// O(pattern × text), never exponential.
    pub fn matches(&self, text: &str) -> bool {
        let p = &self.pattern;
        let t: Vec<char> = text.chars().collect();
        let (mut pi, mut ti) = (0usize, 0usize);
        let mut star: Option<(usize, usize)> = None;
        while ti < t.len() {
            match p.get(pi) {
                Some('*') => {
                    star = Some((pi, ti));
                    pi += 1;
                }
                Some(&c) if c == '?' || c == t[ti] => {
                    pi += 1;
                    ti += 1;
                }
                _ => match star {
                    Some((sp, st)) => {
                        pi = sp + 1;
                        ti = st + 1;
                        star = Some((sp, st + 1));
                    }
                    None => return false,
                },
            }
        }
        p[pi..].iter().all(|&c| c == '*')
    }
}

/// One `[[sync.redact]]` rule, compiled.
#[derive(Debug, Clone)]
struct Rule {
    buckets: Option<Glob>,
    types: Option<Glob>,
    drop: Vec<String>,
    hash: Vec<String>,
}

impl Rule {
    fn applies(&self, bucket_id: &str, bucket_type: &str) -> bool {
        self.buckets.as_ref().map_or(true, |g| g.matches(bucket_id))
            && self.types.as_ref().map_or(true, |g| g.matches(bucket_type))
    }
}

/// What the redaction does to one bucket's events: the union of every rule that applies to it.
/// A field both dropped and hashed is dropped (the stronger choice).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Redaction {
    pub drop: BTreeSet<String>,
    pub hash: BTreeSet<String>,
}

impl Redaction {
    pub fn is_empty(&self) -> bool {
        self.drop.is_empty() && self.hash.is_empty()
    }

    /// Drops and hashes the named top-level data fields in place. `key` is the installation's
    /// secret (see [`keyed_hash`]).
    pub fn apply(&self, key: &[u8; 32], data: &mut Map<String, Value>) {
        for field in &self.drop {
            data.remove(field);
        }
        for field in &self.hash {
            if let Some(v) = data.get_mut(field) {
                *v = Value::String(keyed_hash(key, v));
            }
        }
    }
}

impl Redaction {
    /// [`Redaction::apply`] to event data kept as JSON text (the scan's
    /// [`PageEvent::data`](crate::source::PageEvent)): parsed, redacted, written back. Data
    /// nested deeper than [`MAX_DATA_DEPTH`](crate::state::hash::MAX_DATA_DEPTH) is
    /// [`DataError::TooDeep`] — found in one pass over the text, before anything is parsed —
    /// the same answer the event hash gives, so the scan can quarantine the event either way.
    pub fn apply_raw(&self, key: &[u8; 32], data: &RawValue) -> Result<Box<RawValue>, DataError> {
        check_depth(data.get())?;
        let mut map: Map<String, Value> =
            serde_json::from_str(data.get()).map_err(|e| DataError::Invalid(e.to_string()))?;
        self.apply(key, &mut map);
        Ok(crate::source::object_to_raw(&map))
    }
}

/// `"blake3:" + hex(BLAKE3 keyed with the installation's secret, over the value's canonical
/// JSON)` — so a string hashes its quoted JSON form, and `"1"` and `1` differ. Equal values give
/// equal strings (events stay linkable: "same URL as yesterday"), but without the key — which
/// is made once per installation, kept in the state database and never sent — nobody can test
/// guesses against them (a plain hash of a URL falls to a dictionary of URLs).
pub fn keyed_hash(key: &[u8; 32], value: &Value) -> String {
    let digest = blake3::keyed_hash(key, canonical_json(value).as_bytes());
    let mut out = String::with_capacity(7 + 64);
    out.push_str("blake3:");
    for b in digest.as_bytes() {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// The compiled `include_buckets`, `exclude_buckets` and `redact` settings.
#[derive(Debug, Clone, Default)]
pub struct Privacy {
    include: Vec<Glob>,
    exclude: Vec<Glob>,
    rules: Vec<Rule>,
}

impl Privacy {
    /// Compiles the settings; the error names the key to fix (validation is this compilation,
    /// so what loads is exactly what runs).
    pub fn from_config(sync: &SyncConfig) -> Result<Privacy, ConfigError> {
        let globs = |key: &str, patterns: &[String]| {
            patterns
                .iter()
                .map(|p| Glob::new(p).map_err(|m| ConfigError::invalid(key, m)))
                .collect::<Result<Vec<_>, _>>()
        };
        let include = globs("sync.include_buckets", &sync.include_buckets)?;
        let exclude = globs("sync.exclude_buckets", &sync.exclude_buckets)?;
        let rules = sync
            .redact
            .iter()
            .enumerate()
            .map(|(i, r)| compile_rule(i + 1, r))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Privacy {
            include,
            exclude,
            rules,
        })
    }

    /// Synced at all: matches an include pattern (or there are none) and no exclude pattern.
    pub fn includes(&self, bucket_id: &str) -> bool {
        (self.include.is_empty() || self.include.iter().any(|g| g.matches(bucket_id)))
            && !self.exclude.iter().any(|g| g.matches(bucket_id))
    }

    /// What the rules do to this bucket's events.
    pub fn redaction(&self, bucket_id: &str, bucket_type: &str) -> Redaction {
        let mut r = Redaction::default();
        for rule in self
            .rules
            .iter()
            .filter(|r| r.applies(bucket_id, bucket_type))
        {
            r.drop.extend(rule.drop.iter().cloned());
            r.hash.extend(rule.hash.iter().cloned());
        }
        let dropped = r.drop.clone();
        r.hash.retain(|f| !dropped.contains(f));
        r
    }
}

fn compile_rule(n: usize, rule: &RedactRule) -> Result<Rule, ConfigError> {
    const KEY: &str = "sync.redact";
    let err = |m: String| ConfigError::invalid(KEY, format!("rule {n}: {m}"));
    let glob = |field: &str, v: &Option<String>| {
        v.as_deref()
            .map(|p| Glob::new(p).map_err(|m| err(format!("`{field}`: {m}"))))
            .transpose()
    };
    let buckets = glob("buckets", &rule.buckets)?;
    let types = glob("types", &rule.types)?;
    if buckets.is_none() && types.is_none() {
        return Err(err(
            "says neither `buckets` (a pattern on bucket ids) nor `types` (a bucket type) it applies to; use buckets = \"*\" for all"
                .into(),
        ));
    }
    if rule.drop.is_empty() && rule.hash.is_empty() {
        return Err(err(
            "has neither `drop` nor `hash` fields, so it would redact nothing; e.g. drop = [\"title\"]".into(),
        ));
    }
    if let Some(f) = rule.drop.iter().chain(&rule.hash).find(|f| f.is_empty()) {
        return Err(err(format!("{f:?}: a field name must not be empty")));
    }
    Ok(Rule {
        buckets,
        types,
        drop: rule.drop.clone(),
        hash: rule.hash.clone(),
    })
}

/// A short digest of every filter setting that decides what the upstream holds of one bucket:
/// its redaction and `start_from`. Stored per bucket; when it changes the bucket's cursor is
/// reset so the next cycle reads it again from the start (see `Store::filter_fingerprint`).
/// Only the *effect* counts — rewording a pattern that still selects the same fields changes
/// nothing. Excluded buckets are never scanned, so their fingerprint is never stored.
pub fn fingerprint(redaction: &Redaction, start_from_ns: Option<i64>) -> String {
    let canonical = serde_json::json!({
        "v": 1,
        "drop": redaction.drop,
        "hash": redaction.hash,
        "start_from_ns": start_from_ns,
    });
    let digest = blake3::hash(canonical_json(&canonical).as_bytes());
    let mut out = String::with_capacity(32);
    for b in &digest.as_bytes()[..16] {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// The fingerprint of "no filters": what every bucket synced by a version without filters
/// (state schema 1) was synced under.
pub fn unfiltered_fingerprint() -> String {
    fingerprint(&Redaction::default(), None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn g(p: &str) -> Glob {
        Glob::new(p).unwrap()
    }

    #[test]
    fn glob_wildcards() {
        let cases = [
            ("*", "", true),
            ("*", "aw-watcher-window_host", true),
            ("aw-watcher-window_*", "aw-watcher-window_host", true),
            ("aw-watcher-window_*", "aw-watcher-afk_host", false),
            ("*_host", "aw-watcher-afk_host", true),
            ("*_host", "aw-watcher-afk_host2", false),
            ("aw-?atcher*", "aw-watcher-x", true),
            ("?", "", false),
            ("?", "é", true),
            ("a*b*c", "aXbYbZc", true),
            ("a*b*c", "aXbYbZ", false),
            (
                "*a*a*a*b",
                "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
                false,
            ),
            ("exact", "exact", true),
            ("exact", "Exact", false),
            ("exact", "exactly", false),
            ("**", "x", true),
        ];
        for (p, t, want) in cases {
            assert_eq!(g(p).matches(t), want, "{p:?} on {t:?}");
        }
    }

    #[test]
    fn unsupported_glob_syntax_is_refused() {
        for bad in ["", "aw-[ab]*", "{a,b}", "a\\*"] {
            assert!(Glob::new(bad).is_err(), "{bad:?}");
        }
    }

    fn sync() -> SyncConfig {
        SyncConfig::default()
    }

    #[test]
    fn include_and_exclude_exclude_wins() {
        let mut s = sync();
        assert!(Privacy::from_config(&s).unwrap().includes("anything"));
        s.include_buckets = vec!["aw-watcher-*".into()];
        s.exclude_buckets = vec!["*afk*".into()];
        let p = Privacy::from_config(&s).unwrap();
        assert!(p.includes("aw-watcher-window_h"));
        assert!(!p.includes("aw-watcher-afk_h"), "exclude wins");
        assert!(!p.includes("other"), "not included");
    }

    #[test]
    fn redaction_unions_rules_and_drop_beats_hash() {
        let mut s = sync();
        s.redact = vec![
            RedactRule {
                buckets: Some("aw-watcher-window_*".into()),
                types: None,
                drop: vec!["title".into()],
                hash: vec![],
            },
            RedactRule {
                buckets: None,
                types: Some("web.tab.current".into()),
                drop: vec![],
                hash: vec!["url".into(), "title".into()],
            },
        ];
        let p = Privacy::from_config(&s).unwrap();
        assert!(p.redaction("aw-watcher-afk_h", "afkstatus").is_empty());
        let web = p.redaction("aw-watcher-web_h", "web.tab.current");
        assert_eq!(web.hash, ["title", "url"].map(String::from).into());
        let both = p.redaction("aw-watcher-window_h", "web.tab.current");
        assert_eq!(both.drop, ["title".to_string()].into());
        assert_eq!(both.hash, ["url".to_string()].into());

        let key = [7u8; 32];
        let mut data = json!({"title": "secret", "url": "https://x", "app": "firefox"})
            .as_object()
            .unwrap()
            .clone();
        both.apply(&key, &mut data);
        assert!(!data.contains_key("title"));
        assert_eq!(data["app"], json!("firefox"));
        let expected = blake3::keyed_hash(&key, br#""https://x""#)
            .to_hex()
            .to_string();
        assert_eq!(data["url"], json!(format!("blake3:{expected}")));
        assert_ne!(
            keyed_hash(&key, &json!("1")),
            keyed_hash(&key, &json!(1)),
            "types are kept apart"
        );
        assert_ne!(
            keyed_hash(&[8u8; 32], &json!("https://x")),
            data["url"].as_str().unwrap(),
            "another installation's key gives another hash"
        );
    }

    #[test]
    fn bad_rules_name_the_rule() {
        let bad = [
            RedactRule {
                buckets: None,
                types: None,
                drop: vec!["title".into()],
                hash: vec![],
            },
            RedactRule {
                buckets: Some("*".into()),
                types: None,
                drop: vec![],
                hash: vec![],
            },
            RedactRule {
                buckets: Some("a[b".into()),
                types: None,
                drop: vec!["title".into()],
                hash: vec![],
            },
            RedactRule {
                buckets: Some("*".into()),
                types: None,
                drop: vec!["".into()],
                hash: vec![],
            },
        ];
        for rule in bad {
            let mut s = sync();
            s.redact = vec![rule.clone()];
            let err = Privacy::from_config(&s).expect_err(&format!("{rule:?}"));
            assert_eq!(err.key(), Some("sync.redact"));
            assert!(err.to_string().contains("rule 1"), "{err}");
        }
    }

    #[test]
    fn fingerprint_follows_the_effect_only() {
        let none = Redaction::default();
        assert_eq!(fingerprint(&none, None), unfiltered_fingerprint());
        assert_ne!(fingerprint(&none, Some(1)), unfiltered_fingerprint());
        let mut r = Redaction::default();
        r.drop.insert("title".into());
        assert_ne!(fingerprint(&r, None), unfiltered_fingerprint());
        assert_eq!(fingerprint(&r, None), fingerprint(&r.clone(), None));
    }
}

/// Property tests: the glob matcher against a plain dynamic-programming matcher, on patterns and
/// bucket ids from a small alphabet (so that matches are frequent) and on arbitrary text.
#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    /// `p` matches all of `t`: the textbook table, independent of the backtracking above.
    fn reference(p: &[char], t: &[char]) -> bool {
        let mut table = vec![vec![false; t.len() + 1]; p.len() + 1];
        table[0][0] = true;
        for i in 1..=p.len() {
            for j in 0..=t.len() {
                table[i][j] = match p[i - 1] {
                    '*' => table[i - 1][j] || (j > 0 && table[i][j - 1]),
                    '?' => j > 0 && table[i - 1][j - 1],
                    c => j > 0 && t[j - 1] == c && table[i - 1][j - 1],
                };
            }
        }
        table[p.len()][t.len()]
    }

    fn pattern() -> impl Strategy<Value = String> {
        "[ab\u{e9}_*?-]{1,12}"
    }

    fn bucket_id() -> impl Strategy<Value = String> {
        "[ab\u{e9}_-]{0,20}"
    }

    proptest! {
        #![proptest_config(crate::proptest_config(512))]

        #[test]
        fn glob_agrees_with_the_reference(p in pattern(), t in bucket_id()) {
            let glob = Glob::new(&p).expect("only wildcards and plain characters");
            let (pc, tc): (Vec<char>, Vec<char>) = (p.chars().collect(), t.chars().collect());
            prop_assert_eq!(glob.matches(&t), reference(&pc, &tc), "{:?} on {:?}", p, t);
        }

        #[test]
        fn a_pattern_matches_what_its_wildcards_stand_for(
            p in pattern(),
            fills in proptest::collection::vec(bucket_id(), 12),
        ) {
            // Each `*` replaced by any run, each `?` by one character: always a match.
            let mut text = String::new();
            for (c, fill) in p.chars().zip(fills.iter().cycle()) {
                match c {
                    '*' => text.push_str(fill),
                    '?' => text.push(fill.chars().next().unwrap_or('x')),
                    c => text.push(c),
                }
            }
            prop_assert!(Glob::new(&p).expect("valid").matches(&text), "{:?} on {:?}", p, text);
        }

        #[test]
        fn any_pattern_text_is_refused_or_kept_verbatim(p in any::<String>(), t in any::<String>()) {
            match Glob::new(&p) {
                Ok(glob) => {
                    prop_assert_eq!(glob.as_str(), p.as_str());
                    let (pc, tc): (Vec<char>, Vec<char>) = (p.chars().collect(), t.chars().collect());
                    prop_assert_eq!(glob.matches(&t), reference(&pc, &tc));
                }
                Err(message) => prop_assert!(
                    p.is_empty() || p.contains(['[', ']', '{', '}', '\\']),
                    "refused {:?}: {}", p, message
                ),
            }
        }

        #[test]
        fn exclude_always_wins(
            include in proptest::collection::vec(pattern(), 0..3),
            exclude in proptest::collection::vec(pattern(), 0..3),
            id in bucket_id(),
        ) {
            let sync = SyncConfig {
                include_buckets: include.clone(),
                exclude_buckets: exclude.clone(),
                ..SyncConfig::default()
            };
            let privacy = Privacy::from_config(&sync).expect("valid patterns");
            let hit = |patterns: &[String]| {
                let t: Vec<char> = id.chars().collect();
                patterns.iter().any(|p| reference(&p.chars().collect::<Vec<_>>(), &t))
            };
            let want = (include.is_empty() || hit(&include)) && !hit(&exclude);
            prop_assert_eq!(privacy.includes(&id), want);
        }
    }

    /// Many stars against a long id that almost matches: the single backtrack point keeps this
    /// at pattern × text steps (the bounded-time claim in `Glob::matches`).
    #[test]
    fn star_heavy_patterns_on_long_ids_finish() {
        let glob = Glob::new(&"*a".repeat(50)).expect("valid");
        let id = "a".repeat(49) + &"b".repeat(4000);
        assert!(!glob.matches(&id));
    }
}
