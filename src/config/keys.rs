//! The one table of the config file's keys ([`KEY_DOCS`]): it writes the comment above each
//! key of the generated file, and it decides what a key the structs do not know is.
//!
//! Issue 10: `exclude_bucket = [...]` (for `exclude_buckets`) or a `[synk]` section used to be a
//! warning in a log nobody reads, so a privacy filter silently did nothing. Now:
//!
//! * a key inside a known section (`[sync]`, `[auth]`) that is not one of its keys is an
//!   **error** at its `file:line:column`, with "did you mean" when a key is close, or the
//!   section it belongs to, or the section's keys — nothing else can live there;
//! * a top-level key or section that is a known key's name, close to a known section's name,
//!   or a known section with `-testing` (the ActivityWatch habit; `--testing` reads its own
//!   file here) is an **error** too: it was meant for us;
//! * any other top-level name is **foreign** — another tool's table in a shared file, a key of
//!   a much later version — and only a warning, since refusing to start over it would make
//!   aw-qt crash-loop the module for something that cannot hide data.
//!
//! A test checks that [`KEY_DOCS`] lists exactly the keys of [`super::Config`], so the table
//! cannot drift from the structs.

use toml::de::{DeTable, DeValue};

use super::SyncConfig;

/// One line per key, shown above it in the generated file; a test checks that every key has
/// one and every entry is a key.
pub(super) const KEY_DOCS: &[(&str, &str)] = &[
    (
        "auth.enabled",
        "Use the OAuth login (--login) to get bearer tokens for the upstream.",
    ),
    (
        "auth.client_id",
        "OAuth client id registered with the identity provider.",
    ),
    (
        "auth.redirect_uri",
        "Loopback redirect for the login; another port is used when this one is taken.",
    ),
    (
        "auth.scopes",
        "OAuth scopes requested at login.",
    ),
    (
        "auth.auth_url",
        "Authorization endpoint; empty: found by OpenID discovery of `issuer`.",
    ),
    (
        "auth.token_url",
        "Token endpoint; empty: found by OpenID discovery of `issuer`.",
    ),
    (
        "auth.issuer",
        "OpenID issuer URL of the identity provider.",
    ),
    (
        "auth.revocation_url",
        "Token revocation endpoint (RFC 7009) used by --logout; empty: from discovery.",
    ),
    (
        "auth.userinfo_url",
        "OpenID userinfo endpoint, for \"Logged in as\"; empty: from discovery.",
    ),
    (
        "auth.device_authorization_url",
        "Device authorization endpoint (RFC 8628) for --login --device and logins without a browser; empty: from discovery.",
    ),
    (
        "auth.token_storage",
        "\"auto\" (OS keyring, else a 0600 file with a warning), \"keyring\" or \"file\" (plain text: base64 is not encryption).",
    ),
    (
        "auth.callback",
        "\"auto\" (loopback, deep link if it can't listen), \"loopback\" or \"deep-link\".",
    ),
    (
        "auth.deep_link_uri",
        "Private-use redirect URI for the deep-link fallback (register it with --register-scheme).",
    ),
    (
        "auth.login_timeout",
        "Seconds --login waits for the browser to come back.",
    ),
    (
        "auth.login_on_start",
        "Open the browser login once when the daemon starts logged out.",
    ),
    (
        "sync.enabled",
        "Sync at all; false: the daemon runs but sends nothing.",
    ),
    (
        "sync.base_url",
        "Upstream base URL (https; http only to localhost). Empty: not configured, nothing is sent.",
    ),
    (
        "sync.sync_interval",
        "Seconds between sync cycles",
    ),
    (
        "sync.batch_size",
        "Events per upload batch",
    ),
    (
        "sync.max_retries",
        "Retries of one batch on timeouts, 429, 5xx and network errors",
    ),
    (
        "sync.offline_queue_size",
        "Events read but not yet acknowledged, at most (at least batch_size).",
    ),
    (
        "sync.lookback",
        "Seconds below the newest synced event that each sync re-reads, to catch late events near it at once (at most 30 days); older inserts and deletions are found through aw-server's counts.",
    ),
    (
        "sync.page_size",
        "Events fetched from aw-server per request",
    ),
    (
        "sync.request_timeout",
        "Seconds one upstream request may take",
    ),
    (
        "sync.gzip",
        "gzip the upload bodies.",
    ),
    (
        "sync.verify_batch",
        "Events per bucket the background verification re-reads and re-hashes each step, to catch old events edited in place",
    ),
    (
        "sync.verify_interval",
        "Seconds between two background verification steps",
    ),
    (
        "sync.include_buckets",
        "Bucket ids to sync, as patterns (* any characters, ? one), e.g. [\"aw-watcher-window_*\"]; empty: all.",
    ),
    (
        "sync.exclude_buckets",
        "Bucket ids never synced, as patterns; wins over include_buckets. aw-sync-samay's own buckets are never synced.",
    ),
    (
        "sync.start_from",
        "Upload nothing that ended before this: \"2025-01-31\" (local midnight) or \"2025-01-31T08:00:00+01:00\"; empty: everything. An event running across it is sent whole.",
    ),
    (
        "sync.redact",
        "Redaction rules, as [[sync.redact]] tables with buckets=\"<pattern>\" and/or types=\"<bucket type>\", drop=[\"title\"] (fields removed), hash=[\"url\"] (fields replaced by a hash keyed with a secret that never leaves this machine).",
    ),
    (
        "sync.pull",
        "Also import the other devices' events of the same account into this aw-server, as {bucket_id}-synced-from-{host} buckets (what aw-sync does), so its web UI shows all your devices.",
    ),
    (
        "sync.pull_devices",
        "Devices to pull, by host name or device id (see --status); empty: every other device.",
    ),
    (
        "sync.exclude_pull_devices",
        "Devices never pulled, by host name or device id; wins over pull_devices.",
    ),
];

/// The bounds of a numeric key: what [`super::Config::validate`] checks, and what the key's
/// line in the generated file (and `docs/config.md`, checked by a test) says.
pub(super) struct Bounds {
    pub key: &'static str,
    pub min: u64,
    pub max: u64,
    /// What 0 means, when it is allowed and means something else than a number of things.
    pub zero: Option<&'static str>,
    pub get: fn(&SyncConfig) -> u64,
}

/// The numeric keys' bounds, in the order they are checked.
pub(super) const BOUNDS: &[Bounds] = &[
    Bounds {
        key: "sync.batch_size",
        min: 1,
        max: 10_000,
        zero: None,
        get: |s| s.batch_size as u64,
    },
    Bounds {
        key: "sync.sync_interval",
        min: 1,
        max: u64::MAX,
        zero: None,
        get: |s| s.sync_interval,
    },
    Bounds {
        key: "sync.page_size",
        min: 10,
        max: 100_000,
        zero: None,
        get: |s| s.page_size as u64,
    },
    Bounds {
        key: "sync.request_timeout",
        min: 1,
        max: u64::MAX,
        zero: None,
        get: |s| s.request_timeout,
    },
    Bounds {
        key: "sync.max_retries",
        min: 0,
        max: 100,
        zero: None,
        get: |s| u64::from(s.max_retries),
    },
    Bounds {
        key: "sync.verify_batch",
        min: 0,
        max: 10_000_000,
        zero: Some("never"),
        get: |s| s.verify_batch,
    },
    Bounds {
        key: "sync.verify_interval",
        min: 60,
        max: u64::MAX,
        zero: None,
        get: |s| s.verify_interval,
    },
];

impl Bounds {
    /// How the generated file states the bounds: "at least 1", "at most 100", "10-100000".
    pub fn describe(&self) -> String {
        let range = if self.max == u64::MAX {
            format!("at least {}", self.min)
        } else if self.min == 0 && self.zero.is_none() {
            format!("at most {}", self.max)
        } else {
            format!("{}-{}", self.min, self.max)
        };
        match self.zero {
            Some(zero) => format!("{range}; 0: {zero}"),
            None => range,
        }
    }
}

/// The line above `key` in the generated file: what it does, and its bounds when it has some.
pub(super) fn key_doc(key: &str) -> Option<String> {
    let doc = KEY_DOCS
        .iter()
        .find(|(k, _)| *k == key)
        .map(|(_, doc)| *doc)?;
    Some(match BOUNDS.iter().find(|b| b.key == key) {
        Some(b) => format!("{doc} ({}).", b.describe()),
        None => doc.to_string(),
    })
}

/// The sections of the file, in the table's order.
fn sections() -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    for (key, _) in KEY_DOCS {
        let section = key.split('.').next().unwrap_or(key);
        if !out.contains(&section) {
            out.push(section);
        }
    }
    out
}

/// The keys of `section`, without the section.
fn keys_of(section: &str) -> impl Iterator<Item = &'static str> + '_ {
    KEY_DOCS.iter().filter_map(move |(key, _)| {
        key.strip_prefix(section)
            .and_then(|rest| rest.strip_prefix('.'))
    })
}

/// A name the structs do not know, and what to say about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Unknown {
    /// The dotted key as written.
    pub key: String,
    /// Byte offset of the key in the text.
    pub offset: usize,
    /// What it probably is, or what would be right.
    pub hint: String,
    /// Foreign: warn and go on (see the module docs).
    pub foreign: bool,
}

/// Every key of the parsed document that the structs do not know, in document order.
pub(super) fn unknown_keys(document: &DeTable<'_>) -> Vec<Unknown> {
    let sections = sections();
    let mut found = Vec::new();
    for (key, value) in document.iter() {
        let name = key.get_ref().as_ref();
        if sections.contains(&name) {
            if let DeValue::Table(table) = value.get_ref() {
                for (inner, _) in table.iter() {
                    let inner_name = inner.get_ref().as_ref();
                    if !keys_of(name).any(|k| k == inner_name) {
                        found.push(Unknown {
                            key: format!("{name}.{inner_name}"),
                            offset: inner.span().start,
                            hint: hint_in_section(name, inner_name),
                            foreign: false,
                        });
                    }
                }
            }
            continue;
        }
        let (hint, foreign) = hint_at_top(name, matches!(value.get_ref(), DeValue::Table(_)));
        found.push(Unknown {
            key: name.to_string(),
            offset: key.span().start,
            hint,
            foreign,
        });
    }
    found.sort_by_key(|u| u.offset);
    found
}

/// The sections that have a key `name`, as "[sync]" or "[auth] or [sync]".
fn homes_of(name: &str) -> Option<String> {
    let homes: Vec<String> = KEY_DOCS
        .iter()
        .filter_map(|(k, _)| k.split_once('.'))
        .filter(|(_, key)| *key == name)
        .map(|(section, _)| format!("[{section}]"))
        .collect();
    (!homes.is_empty()).then(|| homes.join(" or "))
}

/// For `section.name`: the closest key of the section, else the section it belongs to, else
/// the section's keys.
fn hint_in_section(section: &str, name: &str) -> String {
    if let Some(close) = closest(name, keys_of(section)) {
        return format!("did you mean `{section}.{close}`?");
    }
    if let Some(homes) = homes_of(name) {
        return format!("`{name}` belongs under {homes}");
    }
    if section == "sync" && ["buckets", "types", "drop", "hash"].contains(&name) {
        return format!(
            "`{name}` belongs to a redaction rule: put it under a [[sync.redact]] header, after \
             every key of [sync]"
        );
    }
    let keys: Vec<&str> = keys_of(section).collect();
    format!("the keys of [{section}] are: {}", keys.join(", "))
}

/// For a top-level `name` (a table when `is_table`): an error's hint, or a foreign name's.
fn hint_at_top(name: &str, is_table: bool) -> (String, bool) {
    let sections = sections();
    if let Some(homes) = homes_of(name) {
        return (
            format!("`{name}` belongs under {homes}: keys above the first [section] header are in no section"),
            false,
        );
    }
    if let Some(base) = name
        .strip_suffix("-testing")
        .filter(|b| sections.contains(b))
    {
        return (
            format!(
                "there is no [{name}]: with --testing, aw-sync-samay reads its own file \
                 (aw-sync-samay-testing.toml); put the settings under [{base}] there"
            ),
            false,
        );
    }
    if let Some(close) = closest(name, sections.iter().copied()) {
        let shown = if is_table {
            format!("[{close}]")
        } else {
            format!("`{close}`")
        };
        return (format!("did you mean {shown}?"), false);
    }
    let known: Vec<String> = sections.iter().map(|s| format!("[{s}]")).collect();
    (
        format!(
            "is not a setting of aw-sync-samay, whose sections are {} (ignored)",
            known.join(" and ")
        ),
        true,
    )
}

/// The candidate nearest to `name` when it is near enough to be a typo of it: at most 2 edits,
/// or a third of the name's length, apart, ignoring case and `-` for `_`.
fn closest<'a>(name: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let norm = |s: &str| s.to_ascii_lowercase().replace('-', "_");
    let name_n = norm(name);
    let limit = 2.max(name.chars().count() / 3);
    candidates
        .map(|c| (edit_distance(&name_n, &norm(c)), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Levenshtein distance in characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The config whose `key` is `value` (through the TOML parser, as a user's file is read).
    fn with(key: &str, value: u64) -> Result<super::super::Config, super::super::ConfigError> {
        let name = key.trim_start_matches("sync.");
        // The queue must hold a batch whatever batch_size is tried.
        let text = format!("[sync]\noffline_queue_size = 100000\n{name} = {value}\n");
        let path = std::path::Path::new("bounds.toml");
        let (config, _) = super::super::parse(&text, path)?;
        config.validate().map(|()| config)
    }

    /// Every bound of [`BOUNDS`] is what loading a file accepts and refuses, with the key named.
    #[test]
    fn the_bounds_table_is_what_validation_checks() {
        for b in BOUNDS {
            assert!(with(b.key, b.min).is_ok(), "{} = {}", b.key, b.min);
            if b.max < i64::MAX as u64 {
                assert!(with(b.key, b.max).is_ok(), "{} = {}", b.key, b.max);
                let e = with(b.key, b.max + 1).expect_err("above the max");
                assert!(e.to_string().contains(b.key), "{e}");
            }
            if b.min > 0 {
                let e = with(b.key, b.min - 1).expect_err("below the min");
                assert!(e.to_string().contains(b.key), "{e}");
            }
        }
    }

    /// The generated file's line above each bounded key states its bounds.
    #[test]
    fn the_generated_file_states_each_keys_bounds() {
        let text = super::super::default_file_contents().expect("renders");
        for b in BOUNDS {
            let line = format!("# {}\n", key_doc(b.key).expect("documented"));
            assert!(line.contains(&format!("({}).", b.describe())), "{line}");
            assert_eq!(text.matches(&line).count(), 1, "{}:\n{text}", b.key);
        }
        assert_eq!(
            key_doc("sync.verify_batch").as_deref(),
            Some("Events per bucket the background verification re-reads and re-hashes each step, to catch old events edited in place (0-10000000; 0: never).")
        );
    }

    /// `docs/config.md` states the same bounds as the table: `min–max`, or `at least min` for a
    /// key without a maximum.
    #[test]
    fn docs_config_md_states_each_keys_bounds() {
        let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/config.md"))
            .expect("docs/config.md");
        for b in BOUNDS {
            let row = doc
                .lines()
                .find(|l| l.starts_with(&format!("| `{}` |", b.key)))
                .unwrap_or_else(|| panic!("no row for {}", b.key));
            let stated = if b.max == u64::MAX {
                format!("at least {}", b.min)
            } else {
                format!("{}–{}", b.min, b.max)
            };
            assert!(
                row.contains(&stated),
                "{}: expected {stated:?} in {row}",
                b.key
            );
        }
    }

    fn unknown(text: &str) -> Vec<Unknown> {
        let table = DeTable::parse(text).expect("TOML");
        unknown_keys(table.get_ref())
    }

    #[test]
    fn known_keys_pass() {
        let text =
            "[auth]\nclient_id = \"x\"\n[sync]\nbase_url = \"\"\n[[sync.redact]]\ndrop = [\"a\"]\n";
        assert_eq!(unknown(text), []);
    }

    #[test]
    fn misspelt_keys_and_sections_get_a_did_you_mean() {
        let found =
            unknown("[synk]\nx = 1\n[sync]\nexclude_bucket = []\n[auth]\nclientid = \"x\"\n");
        let hints: Vec<(&str, &str, bool)> = found
            .iter()
            .map(|u| (u.key.as_str(), u.hint.as_str(), u.foreign))
            .collect();
        assert_eq!(
            hints,
            [
                ("synk", "did you mean [sync]?", false),
                (
                    "sync.exclude_bucket",
                    "did you mean `sync.exclude_buckets`?",
                    false
                ),
                ("auth.clientid", "did you mean `auth.client_id`?", false),
            ]
        );
    }

    #[test]
    fn keys_in_the_wrong_place_name_their_section() {
        let found =
            unknown("base_url = \"x\"\n[sync]\nclient_id = \"y\"\ndrop = []\nfrobnicate = 1\n");
        assert_eq!(found.len(), 4, "{found:?}");
        assert!(found[0].hint.contains("belongs under [sync]"), "{found:?}");
        assert!(found[1].hint.contains("belongs under [auth]"), "{found:?}");
        assert!(found[2].hint.contains("[[sync.redact]]"), "{found:?}");
        assert!(
            found[3]
                .hint
                .starts_with("the keys of [sync] are: enabled, base_url"),
            "{found:?}"
        );
        assert!(found.iter().all(|u| !u.foreign));
    }

    #[test]
    fn testing_sections_and_foreign_tables() {
        let found = unknown("[sync-testing]\nx = 1\n[tool.other]\ny = 2\n");
        assert!(!found[0].foreign && found[0].hint.contains("aw-sync-samay-testing.toml"));
        assert_eq!(found[1].key, "tool");
        assert!(found[1].foreign, "{found:?}");
    }

    #[test]
    fn positions_point_at_the_key() {
        let text = "[sync]\n  exclude_bucket = []\n";
        let found = unknown(text);
        assert_eq!(
            &text[found[0].offset..found[0].offset + 14],
            "exclude_bucket"
        );
    }

    #[test]
    fn edit_distance_counts_edits() {
        assert_eq!(edit_distance("", ""), 0);
        assert_eq!(edit_distance("sync", "synk"), 1);
        assert_eq!(edit_distance("sync", ""), 4);
        assert_eq!(edit_distance("batchsize", "batch_size"), 1);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(closest("SYNC", ["auth", "sync"].into_iter()), Some("sync"));
        assert_eq!(
            closest("issuer_url", ["issuer", "token_url"].into_iter()),
            None
        );
    }
}
