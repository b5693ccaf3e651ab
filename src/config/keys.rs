//! The one table of the config file's keys ([`KEYS`]): it writes the comment above each key of
//! the generated file and the key tables of `docs/config.md`, holds the numeric keys' bounds
//! that loading checks, and decides what a key the structs do not know is.
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
//! A test checks that [`KEYS`] lists exactly the keys of [`super::Config`], so the table
//! cannot drift from the structs.

use toml::de::{DeTable, DeValue};

use super::SyncConfig;

/// One key of the config file: everything about it but its field and default in the structs
/// ([`super::Config`] — the default is read from there). The order is the generated file's.
pub(super) struct Key {
    pub name: &'static str,
    /// Which table of `docs/config.md` lists it. Read where the docs are written: the test
    /// that checks (and rewrites) them, not the program.
    #[cfg_attr(not(test), allow(dead_code))]
    pub group: Group,
    /// One line: the comment above the key in the generated file, and the start of its row in
    /// `docs/config.md`.
    pub doc: &'static str,
    /// What only `docs/config.md` says after that line (markdown); may be empty. Read by the
    /// docs test only, like `group`.
    #[cfg_attr(not(test), allow(dead_code))]
    pub more: &'static str,
    /// For a number: the range loading accepts, stated in the file and the docs.
    pub bounds: Option<Bounds>,
}

/// The tables of `docs/config.md`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Group {
    Sync,
    Privacy,
    Auth,
    Ui,
}

/// The bounds of a numeric key: what [`super::Config::validate`] checks, and what the key's
/// line in the generated file and its row in `docs/config.md` say.
pub(super) struct Bounds {
    pub min: u64,
    pub max: u64,
    /// What 0 means, when it is allowed and means something else than a number of things.
    pub zero: Option<&'static str>,
    pub get: fn(&SyncConfig) -> u64,
}

/// Every key, once: the one place a key's documentation, bounds and docs row come from. A test
/// checks that it lists exactly the keys of [`super::Config`].
pub(super) const KEYS: &[Key] = &[
    Key {
        name: "auth.enabled",
        group: Group::Auth,
        doc: "Use the OAuth login (--login) to get bearer tokens for the upstream.",
        more: "`AW_SYNC_SAMAY_TOKEN` in the environment still overrides it.",
        bounds: None,
    },
    Key {
        name: "auth.client_id",
        group: Group::Auth,
        doc: "OAuth client id registered with the identity provider.",
        more: "A public native client, registered at the provider ([login.md](login.md)).",
        bounds: None,
    },
    Key {
        name: "auth.redirect_uri",
        group: Group::Auth,
        doc: "Loopback redirect for the login; another port is used when this one is taken.",
        more: "",
        bounds: None,
    },
    Key {
        name: "auth.scopes",
        group: Group::Auth,
        doc: "OAuth scopes requested at login.",
        more: "`offline_access` gets a refresh token; `prompt=consent` is sent with it.",
        bounds: None,
    },
    Key {
        name: "auth.auth_url",
        group: Group::Auth,
        doc: "Authorization endpoint; empty: found by OpenID discovery of `issuer`.",
        more: "Set it to override discovery.",
        bounds: None,
    },
    Key {
        name: "auth.token_url",
        group: Group::Auth,
        doc: "Token endpoint; empty: found by OpenID discovery of `issuer`.",
        more: "",
        bounds: None,
    },
    Key {
        name: "auth.issuer",
        group: Group::Auth,
        doc: "OpenID issuer URL of the identity provider.",
        more: "The endpoints come from its discovery document.",
        bounds: None,
    },
    Key {
        name: "auth.revocation_url",
        group: Group::Auth,
        doc: "Token revocation endpoint (RFC 7009) used by --logout; empty: from discovery.",
        more: "None anywhere: `--logout` only forgets the tokens, and says so and how to set this.",
        bounds: None,
    },
    Key {
        name: "auth.userinfo_url",
        group: Group::Auth,
        doc: "OpenID userinfo endpoint, for \"Logged in as\"; empty: from discovery.",
        more: "",
        bounds: None,
    },
    Key {
        name: "auth.device_authorization_url",
        group: Group::Auth,
        doc: "Device authorization endpoint (RFC 8628) for --login --device and logins without a browser; empty: from discovery.",
        more: "Also used by a `--login` where no browser can be opened.",
        bounds: None,
    },
    Key {
        name: "auth.token_storage",
        group: Group::Auth,
        doc: "\"auto\" (OS keyring, else a 0600 file with a warning), \"keyring\" or \"file\" (plain text: base64 is not encryption).",
        more: "",
        bounds: None,
    },
    Key {
        name: "auth.callback",
        group: Group::Auth,
        doc: "\"auto\" (loopback, deep link if it can't listen), \"loopback\" or \"deep-link\".",
        more: "",
        bounds: None,
    },
    Key {
        name: "auth.deep_link_uri",
        group: Group::Auth,
        doc: "Private-use redirect URI for the deep-link fallback (register it with --register-scheme).",
        more: "",
        bounds: None,
    },
    Key {
        name: "auth.login_timeout",
        group: Group::Auth,
        doc: "Seconds --login waits for the browser to come back.",
        more: "The device sign-in waits as long as its code is valid.",
        bounds: None,
    },
    Key {
        name: "auth.login_on_start",
        group: Group::Auth,
        doc: "Open the browser login once when the daemon starts logged out.",
        more: "",
        bounds: None,
    },
    Key {
        name: "auth.resource",
        group: Group::Auth,
        doc: "The API the access tokens are for, sent as the RFC 8707 resource indicator at login and refresh (samay-server's --audience); empty: none.",
        more: "Providers that issue JWT access tokens for an API need it, and the API's scope in `auth.scopes` (e.g. `samay`); see [Run your own upstream](../README.md#run-your-own-upstream). An absolute URI without a fragment.",
        bounds: None,
    },
    Key {
        name: "sync.enabled",
        group: Group::Sync,
        doc: "Sync at all; false: the daemon runs but sends nothing.",
        more: "`--once` says so and exits.",
        bounds: None,
    },
    Key {
        name: "sync.base_url",
        group: Group::Sync,
        doc: "Upstream base URL (https; http only to localhost). Empty: not configured, nothing is sent.",
        more: "`{base_url}/v1/events/batch` receives batches ([upstream-api.md](upstream-api.md)); `--once` stops with this key's name when it is empty. `http://` only to this machine (`localhost`, `127.0.0.1`, `::1`); no user name, password, query or fragment.",
        bounds: None,
    },
    Key {
        name: "sync.sync_interval",
        group: Group::Sync,
        doc: "Seconds between sync cycles",
        more: "Counted from the end of the previous cycle; after a failure the wait doubles, up to 30 min, and is reset on success.",
        bounds: Some(Bounds {
            min: 1,
            max: u64::MAX,
            zero: None,
            get: |s| s.sync_interval,
        }),
    },
    Key {
        name: "sync.batch_size",
        group: Group::Sync,
        doc: "Events per upload batch",
        more: "",
        bounds: Some(Bounds {
            min: 1,
            max: 10_000,
            zero: None,
            get: |s| s.batch_size as u64,
        }),
    },
    Key {
        name: "sync.upload_concurrency",
        group: Group::Sync,
        doc: "Upload batches on the wire at once",
        more: "Answers are recorded in the order the batches were read, and two versions of one event never travel together. 1: one batch at a time. Never more than `offline_queue_size` holds.",
        bounds: Some(Bounds {
            min: 1,
            max: 16,
            zero: None,
            get: |s| s.upload_concurrency as u64,
        }),
    },
    Key {
        name: "sync.max_retries",
        group: Group::Sync,
        doc: "Retries of one batch on timeouts, 429, 5xx and network errors",
        more: "After them the cycle gives up; the next cycle resumes.",
        bounds: Some(Bounds {
            min: 0,
            max: 100,
            zero: None,
            get: |s| u64::from(s.max_retries),
        }),
    },
    Key {
        name: "sync.offline_queue_size",
        group: Group::Sync,
        doc: "Events read but not yet acknowledged, at most (at least batch_size; less than three batches is raised to three: one on the wire, one filling, one queued).",
        more: "Reading pauses when it is full (aw-server keeps the data).",
        bounds: None,
    },
    Key {
        name: "sync.lookback",
        group: Group::Sync,
        doc: "Seconds below the newest synced event that each sync re-reads, to catch late events near it at once (at most 30 days); older inserts and deletions are found through aw-server's counts.",
        more: "See [reliability.md](reliability.md#what-is-read-each-cycle).",
        bounds: None,
    },
    Key {
        name: "sync.page_size",
        group: Group::Sync,
        doc: "Events fetched from aw-server per request",
        more: "A catch-up reads pages of 5 × this.",
        bounds: Some(Bounds {
            min: 10,
            max: 100_000,
            zero: None,
            get: |s| s.page_size as u64,
        }),
    },
    Key {
        name: "sync.request_timeout",
        group: Group::Sync,
        doc: "Seconds one upstream request may take",
        more: "",
        bounds: Some(Bounds {
            min: 1,
            max: u64::MAX,
            zero: None,
            get: |s| s.request_timeout,
        }),
    },
    Key {
        name: "sync.gzip",
        group: Group::Sync,
        doc: "gzip the upload bodies: \"auto\" (unless the upstream is on this machine: a loopback address or localhost), true or false.",
        more: "Over loopback compressing costs CPU on both ends and saves nothing.",
        bounds: None,
    },
    Key {
        name: "sync.verify_batch",
        group: Group::Sync,
        doc: "Events per bucket the background verification re-reads and re-hashes each step, to catch old events edited in place",
        more: "`--once --verify` verifies everything at once.",
        bounds: Some(Bounds {
            min: 0,
            max: 10_000_000,
            zero: Some("never"),
            get: |s| s.verify_batch,
        }),
    },
    Key {
        name: "sync.verify_interval",
        group: Group::Sync,
        doc: "Seconds between two background verification steps",
        more: "",
        bounds: Some(Bounds {
            min: 60,
            max: u64::MAX,
            zero: None,
            get: |s| s.verify_interval,
        }),
    },
    Key {
        name: "sync.pull",
        group: Group::Sync,
        doc: "Also import the other devices' events of the same account into this aw-server, as {bucket_id}-synced-from-{host} buckets (what aw-sync does), so its web UI shows all your devices.",
        more: "See the README's [Pull](../README.md#pull-all-your-devices-in-one-activitywatch).",
        bounds: None,
    },
    Key {
        name: "sync.pull_devices",
        group: Group::Sync,
        doc: "Devices to pull, by host name or device id (see --status); empty: every other device.",
        more: "",
        bounds: None,
    },
    Key {
        name: "sync.exclude_pull_devices",
        group: Group::Sync,
        doc: "Devices never pulled, by host name or device id; wins over pull_devices.",
        more: "Changing either reads the change feed again from the start.",
        bounds: None,
    },
    Key {
        name: "sync.include_buckets",
        group: Group::Privacy,
        doc: "Bucket ids to sync, as patterns (* any characters, ? one), e.g. [\"aw-watcher-window_*\"]; empty: all.",
        more: "Only these buckets are synced.",
        bounds: None,
    },
    Key {
        name: "sync.exclude_buckets",
        group: Group::Privacy,
        doc: "Bucket ids never synced, as patterns; wins over include_buckets. aw-sync-samay's own buckets are never synced.",
        more: "",
        bounds: None,
    },
    Key {
        name: "sync.start_from",
        group: Group::Privacy,
        doc: "Upload nothing that ended before this: \"2025-01-31\" (local midnight) or \"2025-01-31T08:00:00+01:00\"; empty: everything. An event running across it is sent whole.",
        more: "A first sync then does not upload your whole history.",
        bounds: None,
    },
    Key {
        name: "sync.redact",
        group: Group::Privacy,
        doc: "Redaction rules, as [[sync.redact]] tables with buckets=\"<pattern>\" and/or types=\"<bucket type>\", drop=[\"title\"] (fields removed), hash=[\"url\"] (fields replaced by a hash keyed with a secret that never leaves this machine).",
        more: "The redacted data never leaves the machine; examples in the [README](../README.md#privacy-what-leaves-the-machine).",
        bounds: None,
    },
    Key {
        name: "ui.tray",
        group: Group::Ui,
        doc: "The daemon's tray icon: \"auto\" (when the desktop has a tray), \"on\" (say why when it can't) or \"off\".",
        more: "With `\"auto\"` it is shown when the desktop has a tray host (StatusNotifierItem on Linux) and the daemon quietly runs without one otherwise; `\"on\"` also logs why there is none (in a graphical session it waits for a tray host that starts later, and says so). `--tray` is `\"on\"` for one run. Only the daemon shows it: `--once`, `--status`, `--login` and the other commands never do. See the README's [Tray](../README.md#tray).",
        bounds: None,
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

/// The row of `key` in [`KEYS`].
fn key(name: &str) -> Option<&'static Key> {
    KEYS.iter().find(|k| k.name == name)
}

/// The numeric keys with their bounds, in the table's order: what validation checks.
pub(super) fn bounded() -> impl Iterator<Item = (&'static str, &'static Bounds)> {
    KEYS.iter()
        .filter_map(|k| k.bounds.as_ref().map(|b| (k.name, b)))
}

/// The line above `key` in the generated file: what it does, and its bounds when it has some.
pub(super) fn key_doc(name: &str) -> Option<String> {
    let k = key(name)?;
    Some(match &k.bounds {
        Some(b) => format!("{} ({}).", k.doc, b.describe()),
        None => k.doc.to_string(),
    })
}

/// The rows of one table of `docs/config.md` (`| key | default | meaning |`): the generated
/// file's line of each key, its default as the generated file shows it, and what only the docs
/// say. `docs/config.md` holds exactly these rows (a test compares; `SAMAY_WRITE_DOCS=1` on that
/// test writes them), so the docs cannot drift from the code.
#[cfg(test)]
pub(super) fn docs_rows(group: Group) -> String {
    let mut out = String::from("| key | default | meaning |\n|---|---|---|\n");
    for k in KEYS.iter().filter(|k| k.group == group) {
        let default = super::default_value_of(k.name).unwrap_or_else(|| "[]".to_string());
        let mut meaning = key_doc(k.name).unwrap_or_default();
        if !meaning.ends_with('.') {
            meaning.push('.');
        }
        if !k.more.is_empty() {
            meaning.push(' ');
            meaning.push_str(k.more);
        }
        out.push_str(&format!(
            "| `{}` | `{}` | {} |\n",
            k.name,
            default.replace('|', "\\|"),
            meaning.replace('|', "\\|")
        ));
    }
    out
}

/// The sections of the file, in the table's order.
fn sections() -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    for k in KEYS {
        let section = k.name.split('.').next().unwrap_or(k.name);
        if !out.contains(&section) {
            out.push(section);
        }
    }
    out
}

/// The keys of `section`, without the section.
fn keys_of(section: &str) -> impl Iterator<Item = &'static str> + '_ {
    KEYS.iter().filter_map(move |k| {
        k.name
            .strip_prefix(section)
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
    let homes: Vec<String> = KEYS
        .iter()
        .filter_map(|k| k.name.split_once('.'))
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
            known.join(", ")
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

    /// Every bound of [`KEYS`] is what loading a file accepts and refuses, with the key named.
    #[test]
    fn the_bounds_table_is_what_validation_checks() {
        assert_eq!(bounded().count(), 8);
        for (key, b) in bounded() {
            assert!(with(key, b.min).is_ok(), "{} = {}", key, b.min);
            if b.max < i64::MAX as u64 {
                assert!(with(key, b.max).is_ok(), "{} = {}", key, b.max);
                let e = with(key, b.max + 1).expect_err("above the max");
                assert!(e.to_string().contains(key), "{e}");
            }
            if b.min > 0 {
                let e = with(key, b.min - 1).expect_err("below the min");
                assert!(e.to_string().contains(key), "{e}");
            }
        }
    }

    /// The generated file's line above each bounded key states its bounds.
    #[test]
    fn the_generated_file_states_each_keys_bounds() {
        let text = super::super::default_file_contents().expect("renders");
        for (key, b) in bounded() {
            let line = format!("# {}\n", key_doc(key).expect("documented"));
            assert!(line.contains(&format!("({}).", b.describe())), "{line}");
            assert_eq!(text.matches(&line).count(), 1, "{key}:\n{text}");
        }
        assert_eq!(
            key_doc("sync.verify_batch").as_deref(),
            Some("Events per bucket the background verification re-reads and re-hashes each step, to catch old events edited in place (0-10000000; 0: never).")
        );
    }

    /// `docs/config.md`'s three key tables are [`docs_rows`]: each key's line, default, bounds
    /// and the docs' own words come from [`KEYS`]. `SAMAY_WRITE_DOCS=1` rewrites them.
    #[test]
    fn docs_config_md_key_tables_are_generated_from_the_table() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/config.md");
        let doc = std::fs::read_to_string(path).expect("docs/config.md");
        let mut want = doc.clone();
        for group in [Group::Sync, Group::Privacy, Group::Auth, Group::Ui] {
            let begin = format!("<!-- keys:{group:?} begin -->\n");
            let end = format!("<!-- keys:{group:?} end -->");
            let from = want
                .find(&begin)
                .unwrap_or_else(|| panic!("no {begin:?} in docs/config.md"))
                + begin.len();
            let to = from
                + want[from..]
                    .find(&end)
                    .unwrap_or_else(|| panic!("no {end:?}"));
            want.replace_range(from..to, &docs_rows(group));
        }
        if std::env::var_os("SAMAY_WRITE_DOCS").is_some() {
            std::fs::write(path, &want).expect("write docs/config.md");
        }
        assert!(
            doc == want,
            "docs/config.md's key tables differ from src/config/keys.rs; run\n  SAMAY_WRITE_DOCS=1 cargo test -p aw-sync-samay --lib docs_config_md_key_tables\n"
        );
        // The bounds as the docs state them (a sample, so the format is pinned).
        assert!(
            want.contains("| `sync.batch_size` | `500` | Events per upload batch (1-10000). |"),
            "{want}"
        );
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
