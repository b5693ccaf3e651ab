//! Property tests ("fuzzing" with proptest) of every public entry point that parses outside
//! input: the config file, aw-server's answers, the upstream's answers, the token endpoint's
//! answers and the stored tokens, and the login callback on each of its channels (loopback
//! HTTP, paste-back, deep link, `--callback`). The private helpers behind them have their own
//! properties in their modules; `fuzz/` holds the cargo-fuzz targets for the same entry points.
//!
//! Each generator mixes arbitrary bytes or text with structure-aware input (valid documents with
//! one field mutated, extreme numbers, deep nesting, invalid UTF-8, duplicate parameters), and
//! each property says what must hold: no panic, a typed error for malformed input, a round trip
//! for valid input, and no secret in any message. Case counts are set per test so the whole file
//! stays well under a minute on a loaded 2-core machine; `PROPTEST_CASES=N` raises every one of
//! them to at least N for long runs (`scripts/fuzz.sh`). Everything talks only to 127.0.0.1.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use aw_sync_samay::auth::callback::{self, fuzzing, CallbackError, DeliverError};
use aw_sync_samay::auth::oauth::tokens_from_answer;
use aw_sync_samay::auth::store::{StoreError, TokenStore};
use aw_sync_samay::auth::tokens::{Account, StoredTokens};
use aw_sync_samay::auth::AccessToken;
use aw_sync_samay::config::{
    self, AuthConfig, CallbackMode, Config, ConfigError, Gzip, RedactRule, SyncConfig,
    TokenStorage, TrayMode, UiConfig, MAX_LOOKBACK_SECS,
};
use aw_sync_samay::http_body;
use aw_sync_samay::privacy::Redaction;
use aw_sync_samay::source::MAX_SMALL_ANSWER;
use aw_sync_samay::source::{AwClient, Bucket, Event, PageEvent, ServerInfo, SourceError};
use aw_sync_samay::state::hash::{
    check_depth, event_data_hash, event_hash, DataError, Span, MAX_DATA_DEPTH,
};
use aw_sync_samay::upstream::client::{batch_outcome, parse_retry_after};
use aw_sync_samay::upstream::contract::{BatchResponse, ErrorResponse};
use aw_sync_samay::upstream::{UpstreamClient, UpstreamError};
use chrono::{DateTime, TimeZone, Utc};
use proptest::prelude::*;
use proptest::test_runner::Config as ProptestConfig;
use serde_json::{json, Map, Value};

/// The most characters one character of remote text takes once through the printable filter
/// (`\u{2069}`): message caps count characters of the text, not of its escapes.
const PRINTABLE_WIDTH: usize = 8;

/// `default` cases, or at least `PROPTEST_CASES` when that asks for more (long runs).
fn cases(default: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .map_or(default, |asked| asked.max(default));
    ProptestConfig {
        cases,
        ..ProptestConfig::default()
    }
}

/// Text that is mostly printable but reaches every corner: control characters, quotes,
/// backslashes, NUL, non-BMP characters, and lone surrogate-looking escapes as text.
fn nasty_text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => any::<String>(),
        2 => "[ -~]{0,24}",
        1 => "[\"'\\\\\\u{0}\\n\\r\\t\u{7f}\u{202e}\u{1F600}a=&%?#]{0,12}",
    ]
}

/// A JSON value up to a few levels deep, with the numbers serde finds hard.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("JSON has no NaN or infinity", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        nasty_text().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::btree_map(nasty_text(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn json_map() -> impl Strategy<Value = Map<String, Value>> {
    proptest::collection::btree_map(nasty_text(), json_value(), 0..6)
        .prop_map(|m| m.into_iter().collect())
}

// ---------------------------------------------------------------------------------------------
// The config file
// ---------------------------------------------------------------------------------------------

fn toml_uint() -> impl Strategy<Value = u64> {
    // TOML integers are i64: larger u64 values cannot be written at all.
    prop_oneof![0u64..1000, 0..=i64::MAX as u64, Just(i64::MAX as u64)]
}

fn any_auth() -> impl Strategy<Value = AuthConfig> {
    (
        (any::<bool>(), nasty_text(), nasty_text()),
        proptest::collection::vec(nasty_text(), 0..4),
        (
            nasty_text(),
            nasty_text(),
            nasty_text(),
            nasty_text(),
            nasty_text(),
            nasty_text(),
        ),
        prop_oneof![
            Just(TokenStorage::Auto),
            Just(TokenStorage::Keyring),
            Just(TokenStorage::File)
        ],
        prop_oneof![
            Just(CallbackMode::Auto),
            Just(CallbackMode::Loopback),
            Just(CallbackMode::DeepLink)
        ],
        (
            nasty_text(),
            toml_uint(),
            any::<bool>(),
            prop_oneof![
                Just(String::new()),
                "(https|urn)://[a-z]{1,12}\\.example(/[a-z0-9._~-]{0,10}){0,2}",
            ],
        ),
    )
        .prop_map(
            |(
                (enabled, client_id, redirect_uri),
                scopes,
                (
                    auth_url,
                    token_url,
                    issuer,
                    revocation_url,
                    userinfo_url,
                    device_authorization_url,
                ),
                token_storage,
                callback,
                (deep_link_uri, login_timeout, login_on_start, resource),
            )| AuthConfig {
                enabled,
                client_id,
                redirect_uri,
                scopes,
                auth_url,
                token_url,
                issuer,
                revocation_url,
                userinfo_url,
                device_authorization_url,
                token_storage,
                callback,
                deep_link_uri,
                login_timeout,
                login_on_start,
                resource,
            },
        )
}

/// An endpoint the https rule accepts: empty (from discovery), https anywhere, or plain http to
/// this machine.
fn secure_endpoint() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "https://[a-z]{1,12}\\.example(:[0-9]{1,4})?(/[a-z0-9._~-]{0,10}){0,3}",
        "http://(127\\.0\\.0\\.1|localhost|\\[::1\\]):[0-9]{1,4}(/[a-z]{0,8}){0,2}",
    ]
}

/// An endpoint that would carry codes and tokens unencrypted (or is no URL at all).
fn insecure_endpoint() -> impl Strategy<Value = String> {
    prop_oneof![
        "http://[a-z]{1,12}\\.example(:[0-9]{1,4})?(/[a-z]{0,8}){0,2}",
        "http://(10|192\\.168|172\\.16)\\.[0-9]{1,3}\\.[0-9]{1,3}/[a-z]{0,8}",
        "(ftp|file|ws|javascript|data):[a-z/]{1,12}",
        "[a-z]{1,12}\\.example/[a-z]{0,8}",
    ]
}

/// [`any_auth`] with endpoints the https rule accepts: what a valid file holds.
fn valid_auth() -> impl Strategy<Value = AuthConfig> {
    (
        any_auth(),
        (
            secure_endpoint(),
            secure_endpoint(),
            secure_endpoint(),
            secure_endpoint(),
            secure_endpoint(),
            secure_endpoint(),
        ),
    )
        .prop_map(
            |(auth, (auth_url, token_url, issuer, revocation_url, userinfo_url, device))| {
                AuthConfig {
                    auth_url,
                    token_url,
                    issuer,
                    revocation_url,
                    userinfo_url,
                    device_authorization_url: device,
                    ..auth
                }
            },
        )
}

fn any_rule() -> impl Strategy<Value = RedactRule> {
    (
        proptest::option::of(nasty_text()),
        proptest::option::of(nasty_text()),
        proptest::collection::vec(nasty_text(), 0..3),
        proptest::collection::vec(nasty_text(), 0..3),
    )
        .prop_map(|(buckets, types, drop, hash)| RedactRule {
            buckets,
            types,
            drop,
            hash,
        })
}

/// Each `ui.tray` mode.
fn any_tray() -> impl Strategy<Value = TrayMode> {
    prop_oneof![
        Just(TrayMode::Auto),
        Just(TrayMode::On),
        Just(TrayMode::Off)
    ]
}

/// Any `SyncConfig` TOML can hold; values need not pass `validate`.
/// Every value of `sync.gzip`, picked by index.
const GZIP: [Gzip; 3] = [Gzip::Auto, Gzip::Always, Gzip::Never];

fn any_sync() -> impl Strategy<Value = SyncConfig> {
    (
        (any::<bool>(), nasty_text(), toml_uint(), toml_uint()),
        (
            any::<u32>(),
            toml_uint(),
            toml_uint(),
            toml_uint(),
            toml_uint(),
        ),
        0usize..3,
        proptest::collection::vec(nasty_text(), 0..3),
        proptest::collection::vec(nasty_text(), 0..3),
        // A blank start_from means unset, so it cannot come back as itself.
        proptest::option::of(nasty_text().prop_filter("not blank", |s| !s.trim().is_empty())),
        proptest::collection::vec(any_rule(), 0..3),
    )
        .prop_map(
            |(
                (enabled, base_url, sync_interval, batch_size),
                (max_retries, offline_queue_size, lookback, page_size, request_timeout),
                gzip,
                include_buckets,
                exclude_buckets,
                start_from,
                redact,
            )| SyncConfig {
                enabled,
                base_url,
                sync_interval,
                batch_size: batch_size as usize,
                max_retries,
                offline_queue_size: offline_queue_size as usize,
                lookback,
                page_size: page_size as usize,
                request_timeout,
                gzip: GZIP[gzip],
                pull: gzip == 0,
                pull_devices: vec!["laptop".into()],
                exclude_pull_devices: Vec::new(),
                verify_batch: 5000,
                verify_interval: 3600,
                include_buckets,
                exclude_buckets,
                start_from,
                redact,
            },
        )
}

fn pattern() -> impl Strategy<Value = String> {
    "[a-z0-9_.*?-]{1,12}"
}

/// A `SyncConfig` that passes `validate`.
fn valid_sync() -> impl Strategy<Value = SyncConfig> {
    let base_url = prop_oneof![
        Just(String::new()),
        "https://[a-z]{1,10}(\\.[a-z]{2,5}){0,2}(:[1-9][0-9]{0,3})?(/[a-z]{1,6}){0,2}/?",
        "http://(127\\.0\\.0\\.1|localhost|\\[::1\\]):[1-9][0-9]{0,3}",
    ];
    let start_from = prop_oneof![
        Just(None),
        (0i64..4_000_000_000).prop_map(|s| Some(
            Utc.timestamp_opt(s, 0)
                .single()
                .map(|t| t.to_rfc3339())
                .unwrap_or_default()
        )),
        (1971i32..2200, 1u32..13, 1u32..29)
            .prop_map(|(y, m, d)| Some(format!("{y:04}-{m:02}-{d:02}"))),
    ];
    let rule = (
        proptest::option::of(pattern()),
        proptest::option::of(pattern()),
        proptest::collection::vec("[a-z_]{1,8}", 0..3),
        proptest::collection::vec("[a-z_]{1,8}", 0..3),
    )
        .prop_filter("a rule names what and where", |(b, t, d, h)| {
            (b.is_some() || t.is_some()) && !(d.is_empty() && h.is_empty())
        })
        .prop_map(|(buckets, types, drop, hash)| RedactRule {
            buckets,
            types,
            drop,
            hash,
        });
    (
        (
            any::<bool>(),
            base_url,
            1u64..=i64::MAX as u64,
            1usize..=10_000,
        ),
        (
            0u32..=100,
            0usize..100_000,
            0..=MAX_LOOKBACK_SECS,
            10usize..=100_000,
        ),
        (1u64..=i64::MAX as u64, 0usize..3),
        proptest::collection::vec(pattern(), 0..3),
        proptest::collection::vec(pattern(), 0..3),
        start_from,
        proptest::collection::vec(rule, 0..3),
    )
        .prop_map(
            |(
                (enabled, base_url, sync_interval, batch_size),
                (max_retries, extra_queue, lookback, page_size),
                (request_timeout, gzip),
                include_buckets,
                exclude_buckets,
                start_from,
                redact,
            )| SyncConfig {
                enabled,
                base_url,
                sync_interval,
                batch_size,
                max_retries,
                offline_queue_size: batch_size + extra_queue,
                lookback,
                page_size,
                request_timeout,
                gzip: GZIP[gzip],
                pull: gzip == 0,
                pull_devices: vec!["laptop".into()],
                exclude_pull_devices: Vec::new(),
                verify_batch: 5000,
                verify_interval: 3600,
                include_buckets,
                exclude_buckets,
                start_from,
                redact,
            },
        )
}

/// The scalar and list keys of the config, with what kind of value each takes.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Bool,
    Uint,
    Text,
    Choice,
    List,
}

const KEYS: &[(&str, Kind)] = &[
    ("auth.enabled", Kind::Bool),
    ("auth.client_id", Kind::Text),
    ("auth.redirect_uri", Kind::Text),
    ("auth.scopes", Kind::List),
    ("auth.issuer", Kind::Text),
    ("auth.token_storage", Kind::Choice),
    ("auth.callback", Kind::Choice),
    ("auth.login_timeout", Kind::Uint),
    ("auth.login_on_start", Kind::Bool),
    ("sync.enabled", Kind::Bool),
    ("sync.base_url", Kind::Text),
    ("sync.sync_interval", Kind::Uint),
    ("sync.batch_size", Kind::Uint),
    ("sync.max_retries", Kind::Uint),
    ("sync.offline_queue_size", Kind::Uint),
    ("sync.lookback", Kind::Uint),
    ("sync.page_size", Kind::Uint),
    ("sync.request_timeout", Kind::Uint),
    ("sync.gzip", Kind::Bool),
    ("sync.include_buckets", Kind::List),
    ("sync.exclude_buckets", Kind::List),
    ("sync.start_from", Kind::Text),
];

/// Values of the wrong type for `kind` (TOML that parses, but not into that key).
fn wrong_values(kind: Kind) -> &'static [&'static str] {
    match kind {
        Kind::Bool => &["\"yes\"", "1", "[true]", "{ a = 1 }", "1979-05-27"],
        Kind::Uint => &[
            "-1",
            "1.5",
            "1e400",
            "-9223372036854775808",
            "\"60\"",
            "true",
            "[1]",
            "{ a = 1 }",
            "nan",
            "inf",
        ],
        Kind::Text => &["1", "true", "[\"a\"]", "{ a = 1 }", "1979-05-27T07:32:00Z"],
        Kind::Choice => &["\"bogus\"", "\"\"", "1", "[\"auto\"]"],
        Kind::List => &["\"a\"", "[1]", "[[\"a\"]]", "[\"a\", 1]", "{ a = [] }"],
    }
}

/// The full default file with every key uncommented (what a user who edits everything has).
fn full_default_text() -> String {
    toml::to_string(&Config::default()).expect("defaults serialize")
}

/// 1-based line of `key`'s `name = value` line in `text`, tracking `[section]` headers.
fn line_of(text: &str, key: &str) -> usize {
    let (section, name) = key.split_once('.').expect("dotted");
    let mut current = "";
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.starts_with('[') {
            current = t.trim_matches(|c| c == '[' || c == ']');
        } else if current == section && t.split_once(" = ").map(|(k, _)| k) == Some(name) {
            return i + 1;
        }
    }
    panic!("{key} not in the default file")
}

fn with_value(text: &str, line: usize, value: &str) -> String {
    text.lines()
        .enumerate()
        .map(|(i, l)| match l.split_once(" = ") {
            Some((k, _)) if i + 1 == line => format!("{k} = {value}\n"),
            _ => format!("{l}\n"),
        })
        .collect()
}

fn load_text(bytes: &[u8]) -> Result<config::LoadedConfig, ConfigError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("c.toml");
    std::fs::write(&path, bytes).expect("write");
    config::load(&path)
}

/// Checks the `file:line:col` of a parse error points inside `text`.
fn assert_position_inside(text: &str, err: &ConfigError) -> Result<(), TestCaseError> {
    if let ConfigError::Parse { line, column, .. } | ConfigError::UnknownKey { line, column, .. } =
        err
    {
        let lines: Vec<&str> = text.split('\n').collect();
        prop_assert!(
            *line >= 1 && *line <= lines.len(),
            "line {} of {}",
            line,
            lines.len()
        );
        let width = lines[*line - 1].chars().count();
        prop_assert!(
            *column >= 1 && *column <= width + 1,
            "column {} of {}",
            column,
            width
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(cases(256))]

    /// Anything at all: parsed, or refused with a position inside the text; never a panic, and
    /// what parses also validates or is refused with a key.
    #[test]
    fn config_text_parses_or_points_inside_it(text in prop_oneof![
        any::<String>(),
        // TOML-shaped noise: headers, keys, values, brackets.
        proptest::collection::vec(
            prop_oneof![
                Just("[sync]\n".to_string()),
                Just("[auth]\n".to_string()),
                Just("[[sync.redact]]\n".to_string()),
                "[a-z_.]{1,12} = ".prop_map(String::from),
                "(\"[^\"\n]{0,8}\"|[0-9eE+.-]{1,8}|true|false|\\[|\\]|\\{|\\}|,|\n)".prop_map(String::from),
            ],
            0..40,
        ).prop_map(|parts| parts.concat()),
    ]) {
        match config::parse(&text, Path::new("c.toml")) {
            Ok((config, _warnings)) => {
                if let Err(e) = config.validate() {
                    prop_assert!(e.key().is_some(), "{e}");
                }
            }
            Err(e) => {
                prop_assert!(
                    matches!(e, ConfigError::Parse { .. } | ConfigError::UnknownKey { .. }),
                    "{e:?}"
                );
                assert_position_inside(&text, &e)?;
            }
        }
    }

    /// A config rendered from any struct TOML can hold loads back equal, with no warnings.
    #[test]
    fn any_config_round_trips_through_toml(auth in any_auth(), sync in any_sync(), tray in any_tray()) {
        let config = Config { auth, sync, ui: UiConfig { tray } };
        let text = toml::to_string(&config).expect("serializes");
        let (back, warnings) = config::parse(&text, Path::new("c.toml")).expect("parses back");
        prop_assert_eq!(back, config);
        prop_assert!(warnings.is_empty(), "{:?}", warnings);
    }
}

proptest! {
    #![proptest_config(cases(64))]

    /// A valid config written to a file loads (parse + validate) as itself.
    #[test]
    fn a_valid_config_file_loads_as_itself(auth in valid_auth(), sync in valid_sync(), tray in any_tray()) {
        let config = Config { auth, sync, ui: UiConfig { tray } };
        let text = toml::to_string(&config).expect("serializes");
        let loaded = load_text(text.as_bytes()).map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
        prop_assert_eq!(loaded.config, config);
        prop_assert!(loaded.warnings.is_empty());
        prop_assert!(!loaded.created);
    }

    /// Issue 11: any of the login's endpoints over plain http to another machine, or with
    /// another scheme, is refused by the config check, naming that key and saying https.
    #[test]
    fn an_insecure_auth_endpoint_is_refused_at_its_key(
        auth in valid_auth(),
        key in 0usize..6,
        bad in insecure_endpoint(),
    ) {
        let mut auth = auth;
        let (name, slot) = match key {
            0 => ("auth.issuer", &mut auth.issuer),
            1 => ("auth.auth_url", &mut auth.auth_url),
            2 => ("auth.token_url", &mut auth.token_url),
            3 => ("auth.userinfo_url", &mut auth.userinfo_url),
            4 => ("auth.revocation_url", &mut auth.revocation_url),
            _ => ("auth.device_authorization_url", &mut auth.device_authorization_url),
        };
        *slot = bad.clone();
        let config = Config { auth, sync: SyncConfig::default(), ui: UiConfig::default() };
        let err = config.validate().expect_err(&bad);
        prop_assert_eq!(err.key(), Some(name), "{}", err);
        prop_assert!(err.to_string().contains("https"), "{}", err);
    }

    /// One key of a complete file given a value of the wrong type: refused, at that key's line,
    /// naming that key — never taken as a default or a neighbour's value.
    #[test]
    fn a_mistyped_value_is_refused_at_its_key(
        key in proptest::sample::select(KEYS),
        pick in any::<prop::sample::Index>(),
    ) {
        let (key, kind) = key;
        let bad = pick.get(wrong_values(kind));
        let base = full_default_text();
        let line = line_of(&base, key);
        let text = with_value(&base, line, bad);
        let err = load_text(text.as_bytes()).expect_err(&format!("{key} = {bad}"));
        match &err {
            ConfigError::Parse { line: got, key: named, .. } => {
                prop_assert_eq!(*got, line, "{}", err);
                prop_assert_eq!(named.as_deref(), Some(key), "{}", err);
            }
            other => prop_assert!(false, "{key} = {bad}: {other}"),
        }
        prop_assert!(err.to_string().contains(&format!("c.toml:{line}:")), "{}", err);
    }

    /// Out-of-range numbers parse but are refused by validation, pointing at the key.
    #[test]
    fn an_out_of_range_number_is_refused_at_its_key(
        case in proptest::sample::select(&[
            ("sync.batch_size", "0"),
            ("sync.batch_size", "10001"),
            ("sync.page_size", "9"),
            ("sync.page_size", "100001"),
            ("sync.sync_interval", "0"),
            ("sync.request_timeout", "0"),
            ("sync.max_retries", "101"),
            ("sync.max_retries", "4294967296"),
            ("sync.lookback", "2592001"),
            ("sync.offline_queue_size", "99"),
        ][..]),
    ) {
        let (key, value) = case;
        let base = full_default_text();
        let line = line_of(&base, key);
        let err = load_text(with_value(&base, line, value).as_bytes()).expect_err(key);
        prop_assert_eq!(err.key(), Some(key), "{}", err);
        prop_assert!(err.to_string().contains(&format!("c.toml:{line}:")), "{}", err);
    }

    /// Deep nesting, huge numbers, very long lines and invalid UTF-8: a typed error (or a
    /// value), bounded in time, never a stack overflow.
    #[test]
    fn hostile_config_files_get_typed_errors(
        depth in prop_oneof![Just(1usize), 64usize..200, Just(100_000)],
        width in prop_oneof![Just(10usize), Just(1_000_000)],
        garbage in proptest::collection::vec(any::<u8>(), 1..64),
        which in 0usize..6,
    ) {
        let bytes: Vec<u8> = match which {
            0 => format!("[sync]\ninclude_buckets = {}\"a\"{}\n", "[".repeat(depth), "]".repeat(depth)).into_bytes(),
            1 => format!("[sync]\nbatch_size = {}1{}\n", "{ a = ".repeat(depth), " }".repeat(depth)).into_bytes(),
            2 => format!("[{}]\nx = 1\n", vec!["a"; depth].join(".")).into_bytes(),
            3 => format!("[sync]\nbase_url = \"https://x/{}\"\n", "a".repeat(width)).into_bytes(),
            4 => format!("[sync]\nbatch_size = {}\n", "9".repeat(width.min(10_000))).into_bytes(),
            _ => {
                // A valid file with invalid UTF-8 spliced into a comment.
                let mut b = b"# ".to_vec();
                b.extend_from_slice(&garbage);
                b.push(0xff);
                b.extend_from_slice(b"\n[sync]\nbatch_size = 5\n");
                b
            }
        };
        match load_text(&bytes) {
            Ok(_) => prop_assert!(which != 5, "invalid UTF-8 was accepted"),
            Err(ConfigError::Read { source, .. }) => {
                prop_assert_eq!(which, 5);
                prop_assert_eq!(source.kind(), std::io::ErrorKind::InvalidData);
            }
            Err(e @ ConfigError::Parse { .. }) => {
                let text = String::from_utf8_lossy(&bytes);
                assert_position_inside(&text, &e)?;
            }
            Err(e) => prop_assert!(e.key().is_some(), "{e}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// aw-server's answers
// ---------------------------------------------------------------------------------------------

/// Instants i64 nanoseconds hold (1677-2262), at nanosecond precision.
fn representable_instant() -> impl Strategy<Value = DateTime<Utc>> {
    any::<i64>().prop_map(DateTime::<Utc>::from_timestamp_nanos)
}

fn duration() -> impl Strategy<Value = f64> {
    prop_oneof![
        0.0f64..100_000.0,
        Just(0.0),
        (0u64..1_000_000_000).prop_map(|ms| ms as f64 / 1000.0),
        (0.0f64..1e300),
    ]
}

fn event() -> impl Strategy<Value = Event> {
    (
        proptest::option::of(any::<i64>()),
        representable_instant(),
        duration(),
        json_map(),
    )
        .prop_map(|(id, timestamp, duration, data)| Event {
            id,
            timestamp,
            duration,
            data,
        })
}

/// Timestamp text around RFC 3339: right and wrong field widths and ranges, offsets, fractions.
fn timestamp_text() -> impl Strategy<Value = String> {
    let year = prop_oneof![
        Just("2024".to_string()),
        "[0-9]{1,6}",
        Just("+10000".into()),
        Just("-0001".into())
    ];
    let two = "[0-9]{1,3}";
    let fraction = prop_oneof![Just(String::new()), "\\.[0-9]{0,15}"];
    let offset = prop_oneof![
        Just("Z".to_string()),
        Just("z".into()),
        Just(String::new()),
        "[+-][0-9]{2}:[0-9]{2}",
        "[+-][0-9]{1,5}",
    ];
    let sep = prop_oneof![Just("T"), Just("t"), Just(" "), Just("_")];
    (year, two, two, sep, two, two, two, fraction, offset)
        .prop_map(|(y, mo, d, sep, h, mi, s, f, o)| format!("{y}-{mo}-{d}{sep}{h}:{mi}:{s}{f}{o}"))
}

/// An event as JSON, with each field either right, mistyped, null, missing or extreme.
fn event_json() -> impl Strategy<Value = String> {
    let timestamp = prop_oneof![
        3 => representable_instant().prop_map(|t| json!(t.to_rfc3339())),
        3 => timestamp_text().prop_map(Value::String),
        1 => Just(Value::Null),
        1 => any::<i64>().prop_map(|n| json!(n)),
    ];
    let duration = prop_oneof![
        3 => duration().prop_map(|d| d.to_string()),
        1 => Just("-5".to_string()),
        1 => Just("-0".to_string()),
        1 => Just("1e308".to_string()),
        1 => Just("1e309".to_string()),
        1 => Just("123456789012345678901234567890".to_string()),
        1 => Just("NaN".to_string()),
        1 => Just("\"5\"".to_string()),
        1 => Just("null".to_string()),
    ];
    let data = prop_oneof![
        3 => json_map().prop_map(|m| Value::Object(m).to_string()),
        1 => Just("null".to_string()),
        1 => Just("[]".to_string()),
        1 => Just("\"title\"".to_string()),
    ];
    (
        proptest::option::of(timestamp),
        proptest::option::of(duration),
        proptest::option::of(data),
        proptest::option::of(any::<i64>()),
    )
        .prop_map(|(timestamp, duration, data, id)| {
            let mut fields = Vec::new();
            if let Some(id) = id {
                fields.push(format!("\"id\":{id}"));
            }
            if let Some(t) = timestamp {
                fields.push(format!("\"timestamp\":{t}"));
            }
            if let Some(d) = duration {
                fields.push(format!("\"duration\":{d}"));
            }
            if let Some(d) = data {
                fields.push(format!("\"data\":{d}"));
            }
            format!("{{{}}}", fields.join(","))
        })
}

/// The checks the sync engine runs on every event it reads: none may panic, and each must
/// agree with the event's own fields.
fn check_event(e: &Event) -> Result<(), TestCaseError> {
    prop_assert!(e.duration.is_finite(), "JSON cannot carry {}", e.duration);
    let end = e.end();
    prop_assert!(end >= e.timestamp);
    match Span::of(e) {
        Some(span) => {
            prop_assert!(e.duration >= 0.0);
            prop_assert_eq!(Some(span.start_ns), e.timestamp.timestamp_nanos_opt());
            prop_assert!(span.end_ns() >= span.start_ns);
            prop_assert!(event_hash(e).is_some());
        }
        None => {
            // Only what cannot be represented is skipped: negative, or past i64 nanoseconds.
            let start = e.timestamp.timestamp_nanos_opt();
            let representable = start.is_some()
                && e.duration >= 0.0
                && (e.duration * 1e9).round() < i64::MAX as f64
                && start
                    .and_then(|s| s.checked_add((e.duration * 1e9).round() as i64))
                    .is_some();
            prop_assert!(!representable, "{:?} was skipped", e);
            prop_assert!(event_hash(e).is_none());
        }
    }
    Ok(())
}

fn nested(depth: usize) -> String {
    format!("{}1{}", "[".repeat(depth), "]".repeat(depth))
}

proptest! {
    #![proptest_config(cases(256))]

    /// An event as aw-server would serve it reads back as itself and hashes the same.
    #[test]
    fn events_round_trip_through_json(e in event()) {
        let bytes = serde_json::to_vec(&e).expect("serializes");
        let back: Event = serde_json::from_slice(&bytes).expect("parses back");
        prop_assert_eq!(back.timestamp, e.timestamp);
        prop_assert_eq!(back.id, e.id);
        prop_assert_eq!(&back.data, &e.data);
        prop_assert_eq!(back.duration.to_bits(), e.duration.to_bits(), "{} came back as {}", e.duration, back.duration);
        prop_assert_eq!(event_hash(&back).map(|h| h.0), event_hash(&e).map(|h| h.0));
        check_event(&back)?;
    }

    /// Valid-ish events with mutated fields: parsed into something the engine handles, or a
    /// serde error; a missing or mistyped timestamp or duration is never defaulted.
    #[test]
    fn mutated_events_parse_or_fail(text in event_json()) {
        let parsed: Result<Event, _> = serde_json::from_str(&text);
        let raw: Result<Value, _> = serde_json::from_str(&text);
        if let Ok(e) = &parsed {
            check_event(e)?;
            let raw = raw.expect("an event is JSON");
            prop_assert!(raw.get("timestamp").is_some_and(Value::is_string), "{}", text);
            prop_assert!(raw.get("duration").is_some_and(Value::is_number), "{}", text);
            // The data is what was sent: null reads as empty, nothing else is invented.
            match raw.get("data") {
                None | Some(Value::Null) => prop_assert!(e.data.is_empty()),
                Some(Value::Object(m)) => prop_assert_eq!(&e.data, m),
                Some(other) => prop_assert!(false, "data {other} accepted"),
            }
        }
        // A page of them: one bad event fails the page (the client reports Malformed).
        let page = format!("[{text},{text}]");
        prop_assert_eq!(serde_json::from_str::<Vec<Event>>(&page).is_ok(), parsed.is_ok());
    }

    /// Arbitrary bytes as every body aw-server sends: a value or an error, never a panic.
    #[test]
    fn any_bytes_as_aw_server_bodies(body in prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..512),
        event_json().prop_map(String::into_bytes),
    ]) {
        if let Ok(events) = serde_json::from_slice::<Vec<Event>>(&body) {
            for e in &events {
                check_event(e)?;
            }
        }
        let _ = serde_json::from_slice::<Option<Event>>(&body);
        let _ = serde_json::from_slice::<BTreeMap<String, Bucket>>(&body);
        let _ = serde_json::from_slice::<ServerInfo>(&body);
    }

    /// Buckets with null, missing and mistyped fields (Python aw-server keeps some nullable).
    #[test]
    fn buckets_parse_with_nulls_and_refuse_wrong_types(
        client in prop_oneof![Just("null"), Just("\"aw-watcher\""), Just("1")],
        data in prop_oneof![Just("null"), Just("{}"), Just("{\"k\":[1]}"), Just("[]")],
        created in prop_oneof![Just("null"), Just("\"2024-01-01T00:00:00.123456+00:00\""), Just("\"yesterday\"")],
        bucket_type in prop_oneof![Just("\"currentwindow\""), Just("null")],
    ) {
        let body = format!(
            r#"{{"b1":{{"id":"b1","type":{bucket_type},"client":{client},"hostname":null,"created":{created},"data":{data}}}}}"#
        );
        let parsed = serde_json::from_str::<BTreeMap<String, Bucket>>(&body);
        let valid = client != "1" && data != "[]" && created != "\"yesterday\"" && bucket_type != "null";
        prop_assert_eq!(parsed.is_ok(), valid, "{}", body);
        if let Ok(buckets) = parsed {
            let b = &buckets["b1"];
            prop_assert_eq!(&b.client, if client == "null" { "" } else { "aw-watcher" });
            prop_assert_eq!(b.hostname.as_str(), "");
        }
    }
}

proptest! {
    #![proptest_config(cases(32))]

    /// Nesting in event data read as a parsed `Event`: serde_json's depth limit answers with an
    /// error; below it the hash copes.
    #[test]
    fn deeply_nested_event_data_is_an_error_not_a_crash(depth in prop_oneof![1usize..120, 120usize..140, Just(100_000)]) {
        let text = format!(
            r#"[{{"timestamp":"2024-01-01T00:00:00Z","duration":1,"data":{{"a":{}}}}}]"#,
            nested(depth)
        );
        match serde_json::from_str::<Vec<Event>>(&text) {
            Ok(events) => {
                prop_assert!(depth < 128);
                prop_assert!(event_hash(&events[0]).is_some());
            }
            Err(e) => {
                prop_assert!(depth >= 120, "{depth}: {e}");
                prop_assert!(e.to_string().contains("recursion limit"), "{e}");
            }
        }
    }
}

/// Event data nested `depth` levels (the data object is level 1), each level an object or an
/// array as `kinds` says (cycled), with strings full of brackets and escapes along the way
/// that must not count as nesting.
fn nested_data(depth: usize, kinds: &[bool]) -> String {
    let mut open = String::new();
    let mut close = Vec::with_capacity(depth);
    for level in 0..depth {
        let object = level == 0 || kinds[level % kinds.len()];
        if object {
            open.push_str(r#"{"k\"[{":"]}\\\"","a":"#);
            close.push('}');
        } else {
            open.push_str(r#"["{[",  "#);
            close.push(']');
        }
    }
    // The innermost level holds a number instead of another level.
    open.push('1');
    open.extend(close.iter().rev());
    open
}

proptest! {
    #![proptest_config(cases(48))]

    /// Issue 11: event data of any depth, as the scan reads it (text), is hashed when serde_json
    /// could parse it into a map and is `TooDeep` otherwise — by the hash, the depth check and
    /// the redaction alike, in one pass, on a stack smaller than a Windows main thread's. A
    /// hashed one hashes as its parsed map does.
    #[test]
    fn event_data_of_any_depth_is_hashed_or_too_deep(
        depth in prop_oneof![3 => 1usize..=MAX_DATA_DEPTH + 8, 1 => 1_000usize..5_000, 1 => Just(20_000usize), 1 => Just(200_000usize)],
        kinds in proptest::collection::vec(any::<bool>(), 1..8),
    ) {
        let text = nested_data(depth, &kinds);
        let outcome = std::thread::Builder::new()
            .stack_size(512 * 1024)
            .spawn(move || {
                let page = format!(r#"[{{"id":1,"timestamp":"2024-01-01T00:00:00Z","duration":1,"data":{text}}}]"#);
                let events: Vec<PageEvent> = serde_json::from_str(&page).map_err(|e| e.to_string())?;
                let data = &events[0].data;
                let span = Span { start_ns: 1, duration_ns: 2 };
                let hashed = event_data_hash(span, data);
                let checked = check_depth(data.get());
                let redaction = Redaction { drop: ["k\"[{".to_string()].into(), hash: ["a".to_string()].into() };
                let redacted = redaction.apply_raw(&[1; 32], data).map(|_| ());
                let parsed = serde_json::from_str::<Map<String, Value>>(data.get()).ok();
                let parsed_hash = parsed.map(|data| {
                    let event = Event { id: None, timestamp: DateTime::<Utc>::from_timestamp_nanos(1), duration: 2e-9, data };
                    event_hash(&event).map(|h| h.0)
                });
                Ok::<_, String>((hashed, checked, redacted, parsed_hash))
            })
            .expect("thread")
            .join()
            .map_err(|_| TestCaseError::fail(format!("depth {depth}: a reader panicked or overflowed")))?
            .map_err(TestCaseError::fail)?;
        let (hashed, checked, redacted, parsed_hash) = outcome;
        let fits = depth <= MAX_DATA_DEPTH;
        prop_assert_eq!(parsed_hash.is_some(), fits, "serde_json's own limit at {}", depth);
        if fits {
            prop_assert_eq!(hashed.as_ref().ok().copied(), parsed_hash.flatten());
            prop_assert_eq!(checked, Ok(()));
            prop_assert_eq!(redacted, Ok(()));
        } else {
            prop_assert_eq!(hashed, Err(DataError::TooDeep));
            prop_assert_eq!(checked, Err(DataError::TooDeep));
            prop_assert_eq!(redacted, Err(DataError::TooDeep));
        }
    }

    /// Issue 11: a body of any size, in any chunks, announced or not, is read whole up to the
    /// limit and refused past it, having taken at most the limit and one chunk from the peer —
    /// nothing at all when it announced more than the limit.
    #[test]
    fn bodies_are_read_whole_up_to_the_limit_and_refused_past_it(
        chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..600), 0..12),
        limit in 0usize..3000,
        announce in prop_oneof![Just(None), Just(Some(0i64)), (-100i64..100).prop_map(Some)],
    ) {
        let total: usize = chunks.iter().map(Vec::len).sum();
        let biggest = chunks.iter().map(Vec::len).max().unwrap_or(0);
        // The announced length: none, the truth, or a lie around it.
        let announced = announce.map(|lie| (total as i64 + lie).max(0) as u64);
        let whole: Vec<u8> = chunks.concat();
        let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        let (result, taken) = runtime.block_on(http_body::read_chunks(chunks, announced, limit));
        let refused_up_front = announced.is_some_and(|a| a > limit as u64);
        match result {
            Ok(body) => {
                prop_assert!(!refused_up_front && total <= limit);
                prop_assert_eq!(body, whole);
            }
            Err(http_body::BodyError::TooLarge { limit: l }) => {
                prop_assert_eq!(l, limit);
                prop_assert!(refused_up_front || total > limit);
                prop_assert!(taken <= (limit + biggest) as u64, "took {} of a {} limit", taken, limit);
                if refused_up_front {
                    prop_assert_eq!(taken, 0);
                }
            }
            Err(e) => prop_assert!(false, "{e}"),
        }
    }
}

proptest! {
    #![proptest_config(cases(8))]

    /// Issue 11: aw-server's small answers around their ceiling, through the real client over
    /// loopback HTTP: read up to 1 MiB, `TooLarge` past it, whether the length is announced
    /// or the body is chunked.
    #[test]
    fn aw_server_answers_past_their_ceiling_are_too_large(
        extra in prop_oneof![Just(-1i64), Just(0), Just(1), Just(4096), 1i64..100_000],
        chunked in any::<bool>(),
    ) {
        let size = (MAX_SMALL_ANSWER as i64 + extra) as usize;
        // A count padded with spaces: valid JSON of exactly `size` bytes.
        let mut body = vec![b' '; size - 1];
        body.push(b'7');
        // Its own server: the reply slot of `aw_fake` belongs to a test running in parallel.
        static SERVER: OnceLock<FakeServer> = OnceLock::new();
        let fake = SERVER.get_or_init(FakeServer::start);
        fake.answer(Reply { status: 200, headers: Vec::new(), body, chunked });
        let client = AwClient::new("127.0.0.1", fake.addr.port()).expect("client");
        let count = fake.runtime.block_on(client.event_count("b1"));
        match count {
            Ok(n) => {
                prop_assert!(size <= MAX_SMALL_ANSWER);
                prop_assert_eq!(n, 7);
            }
            Err(SourceError::TooLarge { limit, .. }) => {
                prop_assert!(size > MAX_SMALL_ANSWER);
                prop_assert_eq!(limit, MAX_SMALL_ANSWER);
            }
            Err(e) => prop_assert!(false, "{size} bytes: {e}"),
        }
    }
}

/// What the fake server answers next: status, extra headers, body (sent with its length, or
/// `chunked` in pieces of 64 KiB without one).
#[derive(Clone, Default)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    chunked: bool,
}

/// One loopback HTTP server for a whole property test, answering every request with the reply
/// the current case set, on a runtime kept for the test's lifetime.
struct FakeServer {
    runtime: tokio::runtime::Runtime,
    addr: std::net::SocketAddr,
    reply: Arc<Mutex<Reply>>,
}

impl FakeServer {
    fn start() -> FakeServer {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let reply = Arc::new(Mutex::new(Reply::default()));
        let shared = reply.clone();
        let addr = runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let addr = listener.local_addr().expect("addr");
            let app = axum::Router::new().fallback(move || {
                let r = shared.lock().expect("reply").clone();
                async move {
                    let body = if r.chunked {
                        let pieces = r.body.chunks(64 * 1024).map(<[u8]>::to_vec).collect();
                        axum::body::Body::new(Pieces(pieces))
                    } else {
                        axum::body::Body::from(r.body)
                    };
                    let mut response = axum::response::Response::new(body);
                    *response.status_mut() =
                        axum::http::StatusCode::from_u16(r.status).expect("status");
                    for (name, value) in r.headers {
                        if let (Ok(n), Ok(v)) = (
                            axum::http::HeaderName::from_bytes(name.as_bytes()),
                            axum::http::HeaderValue::from_str(&value),
                        ) {
                            response.headers_mut().append(n, v);
                        }
                    }
                    response
                }
            });
            tokio::spawn(async move {
                let _ = axum::serve(listener, app).await;
            });
            addr
        });
        FakeServer {
            runtime,
            addr,
            reply,
        }
    }

    fn answer(&self, reply: Reply) {
        *self.reply.lock().expect("reply") = reply;
    }
}

/// A body sent in pieces, without a length (chunked transfer encoding).
struct Pieces(std::collections::VecDeque<Vec<u8>>);

impl hyper::body::Body for Pieces {
    type Data = hyper::body::Bytes;
    type Error = std::convert::Infallible;
    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        std::task::Poll::Ready(
            self.get_mut()
                .0
                .pop_front()
                .map(|p| Ok(hyper::body::Frame::data(p.into()))),
        )
    }
}

fn aw_fake() -> &'static FakeServer {
    static SERVER: OnceLock<FakeServer> = OnceLock::new();
    SERVER.get_or_init(FakeServer::start)
}

/// A status an HTTP server may send as a final answer.
fn final_status() -> impl Strategy<Value = u16> {
    prop_oneof![
        3 => Just(200u16),
        1 => Just(201),
        1 => Just(204),
        1 => Just(304),
        2 => Just(404),
        1 => Just(400),
        1 => Just(401),
        1 => Just(413),
        1 => Just(429),
        2 => Just(500),
        1 => Just(503),
        1 => 200u16..=599,
    ]
}

fn aw_body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        2 => proptest::collection::vec(event(), 0..4).prop_map(|e| serde_json::to_vec(&e).expect("events")),
        2 => event_json().prop_map(|e| format!("[{e}]").into_bytes()),
        1 => Just(b"null".to_vec()),
        1 => "[ -~]{0,30}There's no bucket named [a-z]{1,8}".prop_map(String::into_bytes),
        1 => Just(br#"{"message":"The requested bucket 'b' does not exist"}"#.to_vec()),
        1 => Just(br#"{"hostname":"h","version":"v0.12","testing":true}"#.to_vec()),
        1 => proptest::collection::vec(any::<u8>(), 0..300),
        1 => "<html>[ -~]{500,3000}</html>".prop_map(String::into_bytes),
        1 => Just(b"42".to_vec()),
    ]
}

proptest! {
    #![proptest_config(cases(48))]

    /// Every answer aw-server could give, through the real client over loopback HTTP: each
    /// call ends in a value or the typed error the engine branches on.
    #[test]
    fn aw_server_answers_become_values_or_typed_errors(status in final_status(), body in aw_body()) {
        let fake = aw_fake();
        let body = if status == 204 || status == 304 { Vec::new() } else { body };
        fake.answer(Reply { status, headers: Vec::new(), body: body.clone(), chunked: false });
        let client = AwClient::new("127.0.0.1", fake.addr.port()).expect("client");
        let (events, event, info, count) = fake.runtime.block_on(async {
            (
                client.get_events("b1", None, None, Some(10)).await,
                client.get_event("b1", 7).await,
                client.info().await,
                client.event_count("b1").await,
            )
        });
        let ok = (200..300).contains(&status);
        let parses = |ok_parse: bool| ok && ok_parse;

        // get_events: a page of events, or the right error.
        match &events {
            Ok(list) => {
                prop_assert!(parses(serde_json::from_slice::<Vec<Event>>(&body).is_ok()));
                for e in list {
                    check_event(e)?;
                }
            }
            Err(SourceError::BucketNotFound(id)) => {
                prop_assert_eq!(status, 404);
                prop_assert_eq!(id.as_str(), "b1");
            }
            Err(SourceError::Malformed { detail, .. }) => {
                prop_assert!(ok, "Malformed for {}", status);
                // serde's capped message and an 80-character excerpt, each character at most
                // PRINTABLE_WIDTH once printable (and Debug adds a backslash to each escape).
                prop_assert!(
                    detail.chars().count() < PRINTABLE_WIDTH * 260 + (PRINTABLE_WIDTH + 2) * 80 + 100,
                    "{} chars", detail.chars().count()
                );
                prop_assert!(!detail.chars().any(char::is_control), "{:?}", detail);
            }
            Err(SourceError::Status { status: s, body: snippet, .. }) => {
                prop_assert_eq!(*s, status);
                prop_assert!(!ok && status != 404);
                prop_assert!(snippet.chars().count() <= PRINTABLE_WIDTH * 200 + 1, "{} chars", snippet.chars().count());
                prop_assert!(!snippet.chars().any(char::is_control), "{:?}", snippet);
            }
            Err(e) => prop_assert!(false, "{e}"),
        }

        // get_event: a 404 is "no such event" unless the body says the bucket is missing.
        let says_bucket = {
            let t = String::from_utf8_lossy(&body).to_ascii_lowercase();
            t.contains("no bucket named") || t.contains("requested bucket")
        };
        match (&event, status) {
            (Ok(None), 404) => prop_assert!(!says_bucket),
            (Err(SourceError::BucketNotFound(_)), 404) => prop_assert!(says_bucket),
            (Ok(e), s) => {
                prop_assert!((200..300).contains(&s), "{} gave {:?}", s, e);
                if let Some(e) = e {
                    check_event(e)?;
                }
            }
            (Err(SourceError::Malformed { .. }), s) => prop_assert!((200..300).contains(&s)),
            (Err(SourceError::Status { status: s, .. }), st) => prop_assert_eq!(*s, st),
            (Err(e), _) => prop_assert!(false, "{e}"),
        }

        // info tells aw-server from another program on its port: a 3xx/4xx, or a success
        // whose body is not aw-server's info, is "not aw-server"; a 5xx may be aw-server in
        // trouble, a plain status error.
        let is_info = serde_json::from_slice::<ServerInfo>(&body).is_ok();
        match &info {
            Ok(_) => prop_assert!(parses(is_info)),
            Err(SourceError::NotAwServer { detail, .. }) => {
                prop_assert!((300..500).contains(&status) || (ok && !is_info), "{} {}", status, detail);
                prop_assert!(detail.chars().count() < 200, "{} chars", detail.chars().count());
            }
            Err(SourceError::Status { status: s, .. }) => {
                prop_assert_eq!(*s, status);
                prop_assert!(status >= 500);
            }
            Err(e) => prop_assert!(false, "{e}"),
        }
        match &count {
            Ok(n) => prop_assert_eq!(serde_json::from_slice::<u64>(&body).ok(), Some(*n)),
            Err(SourceError::BucketNotFound(_)) => prop_assert_eq!(status, 404),
            Err(SourceError::Status { .. } | SourceError::Malformed { .. }) => {}
            Err(e) => prop_assert!(false, "{e}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The upstream's answers
// ---------------------------------------------------------------------------------------------

/// A bearer token: long enough to be scrubbed (4+), from the characters real tokens use.
fn bearer_token() -> impl Strategy<Value = String> {
    "[A-Za-z0-9][A-Za-z0-9._~-]{9,40}"
}

fn http_date(secs: u64) -> String {
    httpdate::fmt_http_date(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
}

/// `Retry-After` values: delta-seconds, the three HTTP-date forms, and near misses.
fn retry_after_text() -> impl Strategy<Value = String> {
    let secs = 0u64..253_402_300_799; // up to 9999-12-31, httpdate's last day
    prop_oneof![
        2 => (0u64..100_000).prop_map(|n| n.to_string()),
        1 => "[0-9]{19,40}",
        1 => " {0,3}[0-9]{1,5} {0,3}",
        2 => secs.clone().prop_map(http_date),
        1 => secs.clone().prop_map(|s| {
            // RFC 850 form: "Sunday, 06-Nov-94 08:49:37 GMT"
            let t = Utc.timestamp_opt(s as i64, 0).single().expect("in range");
            t.format("%A, %d-%b-%y %H:%M:%S GMT").to_string()
        }),
        1 => secs.prop_map(|s| {
            // asctime form: "Sun Nov  6 08:49:37 1994"
            let t = Utc.timestamp_opt(s as i64, 0).single().expect("in range");
            t.format("%a %b %e %H:%M:%S %Y").to_string()
        }),
        1 => "-[0-9]{1,5}|[0-9]{1,5}\\.[0-9]|[0-9]{1,5}s|\\+[0-9]{1,3}|0x[0-9a-f]{1,4}",
        1 => "(Mon|Foo), [0-9]{1,2} (Jan|Feb|Xyz) [0-9]{1,5} [0-9]{1,2}:[0-9]{1,2}:[0-9]{1,2} (GMT|UTC|PST)",
        1 => any::<String>(),
    ]
}

/// The body of an upstream answer: right, mutated, echoing the token, or junk.
fn upstream_body(token: String) -> impl Strategy<Value = Vec<u8>> {
    let number = prop_oneof![
        any::<u64>().prop_map(|n| n.to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        Just("18446744073709551616".to_string()),
        Just("1.5".to_string()),
        Just("1e3".to_string()),
        Just("null".to_string()),
        Just("\"3\"".to_string()),
    ];
    let index = prop_oneof![
        4 => 0i64..60,
        1 => any::<i64>(),
        1 => Just(-1i64),
    ];
    let t = token.clone();
    let t2 = token.clone();
    let t3 = token;
    prop_oneof![
        2 => (any::<u64>(), any::<u64>()).prop_map(|(a, d)| format!(r#"{{"accepted":{a},"duplicates":{d},"extra":[1]}}"#).into_bytes()),
        2 => (number.clone(), number).prop_map(|(a, d)| format!(r#"{{"accepted":{a},"duplicates":{d}}}"#).into_bytes()),
        1 => Just(br#"{"accepted":1}"#.to_vec()),
        3 => (nasty_text(), proptest::option::of(proptest::collection::vec(index, 0..12)))
            .prop_map(|(error, rejected)| {
                let mut v = json!({ "error": error });
                if let Some(r) = rejected {
                    v["rejected"] = json!(r);
                }
                v.to_string().into_bytes()
            }),
        1 => Just(br#"{"error":"bad","rejected":[1.5]}"#.to_vec()),
        1 => Just(br#"{"error":"bad","rejected":"all"}"#.to_vec()),
        2 => (nasty_text(), 0usize..3).prop_map(move |(around, shape)| match shape {
            // The token echoed: in the error text, in a mistyped field, in plain text.
            0 => json!({ "error": format!("{around} Bearer {t} {around}") }).to_string().into_bytes(),
            1 => format!(r#"{{"accepted":"Bearer {t}","duplicates":0}}"#).into_bytes(),
            _ => format!("{around}Authorization: Bearer {t}\n{around}").into_bytes(),
        }),
        1 => (0usize..1300).prop_map(move |pad| {
            // Straddling the 1200-byte excerpt and the 300-character cut.
            format!("{}{t2}{}", "é".repeat(pad / 2), "x".repeat(pad)).into_bytes()
        }),
        1 => "[ -~]{0,20}".prop_map(move |p| format!(r#"{{"accepted":0,"duplicates":"{p}{t3}"}}"#).into_bytes()),
        1 => proptest::collection::vec(any::<u8>(), 0..400),
        1 => "<html>[ -~]{300,2000}</html>".prop_map(String::into_bytes),
    ]
}

fn any_status() -> impl Strategy<Value = u16> {
    prop_oneof![
        4 => prop_oneof![Just(200u16), Just(201), Just(202), Just(204)],
        4 => prop_oneof![Just(400u16), Just(422)],
        2 => prop_oneof![Just(401u16), Just(413), Just(408), Just(429), Just(501)],
        2 => 500u16..600,
        1 => 300u16..400,
        1 => 400u16..500,
        1 => 100u16..1000,
        1 => any::<u16>(),
    ]
}

/// Checks one outcome of a batch of `events` events against the status and body it came from.
fn check_outcome(
    status: u16,
    retry_after: Option<&str>,
    body: &[u8],
    events: usize,
    token: &str,
    outcome: &Result<BatchResponse, UpstreamError>,
) -> Result<(), TestCaseError> {
    match outcome {
        Ok(answer) => {
            prop_assert!((200..300).contains(&status), "{} accepted", status);
            let parsed = serde_json::from_slice::<BatchResponse>(body).ok();
            prop_assert_eq!(Some(answer), parsed.as_ref());
        }
        Err(e) => {
            let text = format!("{e} {e:?}");
            prop_assert!(!text.contains(token), "token in {}", text);
            match e {
                UpstreamError::Malformed(m) => {
                    prop_assert!((200..300).contains(&status));
                    prop_assert!(serde_json::from_slice::<BatchResponse>(body).is_err());
                    prop_assert!(
                        m.chars().count() < PRINTABLE_WIDTH * 600,
                        "{} chars",
                        m.chars().count()
                    );
                    prop_assert!(!m.chars().any(char::is_control), "{:?}", m);
                }
                UpstreamError::Unauthorized => prop_assert_eq!(status, 401),
                UpstreamError::TooLarge => prop_assert_eq!(status, 413),
                UpstreamError::Retryable {
                    status: s,
                    retry_after: wait,
                } => {
                    prop_assert_eq!(*s, status);
                    prop_assert!(
                        matches!(status, 408 | 429)
                            || ((500..600).contains(&status) && status != 501)
                    );
                    let expected =
                        retry_after.and_then(|v| parse_retry_after(v, SystemTime::now()));
                    prop_assert_eq!(wait.is_some(), expected.is_some());
                    if retry_after.is_some_and(|v| v.trim().bytes().all(|b| b.is_ascii_digit())) {
                        prop_assert_eq!(*wait, expected);
                    }
                }
                UpstreamError::Rejected {
                    status: s,
                    message,
                    rejected,
                } => {
                    prop_assert_eq!(*s, status);
                    prop_assert!(status == 400 || status == 422);
                    prop_assert!(
                        message.chars().count() <= PRINTABLE_WIDTH * 300 + 1,
                        "{} chars",
                        message.chars().count()
                    );
                    prop_assert!(!message.chars().any(char::is_control), "{:?}", message);
                    if let Some(idx) = rejected {
                        prop_assert!(!idx.is_empty());
                        prop_assert!(
                            idx.windows(2).all(|w| w[0] < w[1]),
                            "sorted, no duplicates: {:?}",
                            idx
                        );
                        prop_assert!(idx.iter().all(|&i| i < events), "{:?} of {}", idx, events);
                        let named = serde_json::from_slice::<ErrorResponse>(body)
                            .ok()
                            .and_then(|e| e.rejected)
                            .unwrap_or_default();
                        prop_assert!(
                            idx.iter().all(|i| named.contains(i)),
                            "{:?} not all in {:?}",
                            idx,
                            named
                        );
                    }
                }
                UpstreamError::Fatal { status: s, message } => {
                    prop_assert_eq!(*s, status);
                    prop_assert!(
                        !(200..300).contains(&status)
                            && !matches!(status, 401 | 413 | 408 | 429 | 400 | 422)
                            && (status == 501 || !(500..600).contains(&status))
                    );
                    prop_assert!(
                        message.chars().count() <= PRINTABLE_WIDTH * 300 + 40,
                        "{} chars",
                        message.chars().count()
                    );
                    prop_assert!(!message.chars().any(char::is_control), "{:?}", message);
                }
                UpstreamError::Network(_) | UpstreamError::Config(_) => prop_assert!(false, "{e}"),
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(cases(512))]

    #[test]
    fn upstream_answers_are_classified_without_leaking_the_token(
        (token, body) in bearer_token().prop_flat_map(|t| (Just(t.clone()), upstream_body(t))),
        status in any_status(),
        retry_after in proptest::option::of(retry_after_text()),
        location in proptest::option::of(prop_oneof![
            Just("https://elsewhere.example/v1".to_string()),
            nasty_text(),
        ]),
        events in 0usize..50,
    ) {
        // A redirect that names the token in its target must not leak it either.
        let location = location.map(|l| format!("{l}?access_token={token}"));
        let got = batch_outcome(status, retry_after.as_deref(), location.as_deref(), &body, events, &AccessToken::new(token.clone()));
        match got {
            None => prop_assert!(!(100..1000).contains(&status), "{} refused", status),
            Some(outcome) => check_outcome(status, retry_after.as_deref(), &body, events, &token, &outcome)?,
        }
    }

    #[test]
    fn retry_after_reads_seconds_and_dates(value in retry_after_text(), now in 0u64..253_402_300_799) {
        let now_t = SystemTime::UNIX_EPOCH + Duration::from_secs(now);
        let got = parse_retry_after(&value, now_t);
        let trimmed = value.trim();
        if !trimmed.is_empty() && trimmed.bytes().all(|b| b.is_ascii_digit()) {
            prop_assert_eq!(got, Some(Duration::from_secs(trimmed.parse::<u64>().unwrap_or(u64::MAX))));
        } else if let Ok(when) = httpdate::parse_http_date(trimmed) {
            prop_assert_eq!(got, Some(when.duration_since(now_t).unwrap_or(Duration::ZERO)));
        } else {
            prop_assert_eq!(got, None, "{:?}", value);
        }
    }

    /// A date written as HTTP writes it comes back as the wait until then (zero once past).
    #[test]
    fn retry_after_dates_round_trip(now in 0u64..200_000_000_000, delta in -1_000_000i64..1_000_000) {
        let now_t = SystemTime::UNIX_EPOCH + Duration::from_secs(now);
        let then = now.saturating_add_signed(delta);
        let expected = Duration::from_secs(then.saturating_sub(now));
        prop_assert_eq!(parse_retry_after(&http_date(then), now_t), Some(expected));
    }
}

fn upstream_fake() -> &'static FakeServer {
    static SERVER: OnceLock<FakeServer> = OnceLock::new();
    SERVER.get_or_init(FakeServer::start)
}

fn batch(events: usize) -> aw_sync_samay::upstream::contract::BatchRequest {
    use aw_sync_samay::upstream::contract::{BatchRequest, UpEvent};
    BatchRequest {
        batch_id: uuid::Uuid::new_v4(),
        device_id: uuid::Uuid::new_v4(),
        user_id: None,
        hostname: "h".into(),
        sync_timestamp: "2024-01-01T00:00:00Z".into(),
        buckets: BTreeMap::new(),
        events: (0..events)
            .map(|i| UpEvent {
                bucket_id: "b".into(),
                event_id: i as i64,
                hash: "00".into(),
                timestamp: "2024-01-01T00:00:00Z".into(),
                duration: 1.0,
                data: aw_sync_samay::source::model::empty_object(),
            })
            .collect(),
        deletions: Vec::new(),
    }
}

proptest! {
    #![proptest_config(cases(48))]

    /// The same answers through the real client over loopback HTTP (headers, bounded body
    /// read, gzip upload): classified exactly as the socket-free entry point classifies them.
    #[test]
    fn the_real_client_classifies_answers_the_same_way(
        (token, body) in bearer_token().prop_flat_map(|t| (Just(t.clone()), upstream_body(t))),
        status in prop_oneof![Just(200u16), Just(400), Just(422), Just(429), Just(503), Just(401), Just(413), Just(404), 200u16..=599],
        retry_after in proptest::option::of(prop_oneof![(0u64..100_000).prop_map(|n| n.to_string()), Just("soon".to_string()), Just(http_date(1))]),
        events in 1usize..20,
        big in proptest::bool::weighted(0.05),
    ) {
        let fake = upstream_fake();
        let mut body = if status == 204 || status == 304 { Vec::new() } else { body };
        if big {
            // Past the 1 MiB the client reads: only the start is looked at.
            body.extend_from_slice(&vec![b'x'; 1_200_000]);
        }
        let headers = retry_after.iter().map(|v| ("retry-after".to_string(), v.clone())).collect();
        fake.answer(Reply { status, headers, body: body.clone(), chunked: false });
        let client = UpstreamClient::new(&format!("http://{}", fake.addr), Duration::from_secs(20), true).expect("client");
        let token_value = AccessToken::new(token.clone());
        let got = fake.runtime.block_on(client.send_batch(&token_value, &batch(events)));
        let read = &body[..body.len().min(1024 * 1024)];
        let direct = batch_outcome(status, retry_after.as_deref(), None, read, events, &token_value).expect("a status");
        check_outcome(status, retry_after.as_deref(), read, events, &token, &got)?;
        match (&got, &direct) {
            (Err(UpstreamError::Retryable { status: a, .. }), Err(UpstreamError::Retryable { status: b, .. })) => prop_assert_eq!(a, b),
            (Err(UpstreamError::Fatal { status: a, message: m }), Err(UpstreamError::Fatal { status: b, .. })) if (300..400).contains(a) => {
                prop_assert_eq!(a, b);
                prop_assert!(m.contains("not followed"));
            }
            // A success whose body went on past the most read is refused whole: the entry
            // point without a socket only ever sees the prefix, which may parse or not.
            (Err(UpstreamError::Malformed(m)), _) if big && (200..300).contains(&status) => {
                prop_assert!(m.contains("larger than 1 MiB"), "{}", m);
            }
            _ => prop_assert_eq!(&got, &direct),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The login callback: query, loopback HTTP, paste-back, deep link, `--callback`
// ---------------------------------------------------------------------------------------------

/// The state of the login under test, and an authorization code: both secrets, from alphabets
/// that never occur in the pages by chance.
fn secrets() -> impl Strategy<Value = (String, String)> {
    ("st_[A-Za-z0-9]{20,40}", "CODE[A-Z]{16,24}")
}

#[derive(Debug, Clone)]
enum Key {
    Code,
    State,
    Iss,
    Error,
    Description,
    Other(String),
}

impl Key {
    fn name(&self) -> &str {
        match self {
            Key::Code => "code",
            Key::State => "state",
            Key::Iss => "iss",
            Key::Error => "error",
            Key::Description => "error_description",
            Key::Other(k) => k,
        }
    }
}

/// The parameters of an authorization response: mostly one of each, sometimes missing,
/// duplicated, empty, or for another login. Secrets only ever sit in `code` and `state`.
fn params(state: String, code: String) -> impl Strategy<Value = Vec<(Key, String)>> {
    let wrong_state = prop_oneof![
        Just(String::new()),
        "st_[A-Za-z0-9]{20,40}",
        Just(format!("{state}x")),
        Just(state[..state.len() - 1].to_string()),
        Just(state.to_uppercase()),
    ];
    let state_value = prop_oneof![6 => Just(state), 2 => wrong_state];
    let code_value = prop_oneof![6 => Just(code.clone()), 1 => Just(String::new()), 1 => Just(format!("{code} +&=%"))];
    let param = prop_oneof![
        4 => code_value.prop_map(|v| (Key::Code, v)),
        4 => state_value.prop_map(|v| (Key::State, v)),
        1 => nasty_text().prop_map(|v| (Key::Iss, v)),
        1 => prop_oneof![Just("access_denied".to_string()), nasty_text()].prop_map(|v| (Key::Error, v)),
        1 => nasty_text().prop_map(|v| (Key::Description, v)),
        1 => ("[a-z_]{1,8}", nasty_text()).prop_map(|(k, v)| (Key::Other(k), v)),
    ];
    proptest::collection::vec(param, 0..7)
}

fn encode(params: &[(Key, String)]) -> String {
    let mut q = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in params {
        q.append_pair(k.name(), v);
    }
    q.finish()
}

/// `printable` as specified: control characters to spaces, cut at `max` characters with `…`.
fn shown(text: &str, max: usize) -> String {
    let head: String = text.chars().take(max).collect();
    let mut out = aw_sync_samay::printable::printable(&head).into_owned();
    if text.chars().count() > max {
        out.push('…');
    }
    out
}

/// What the login must make of these parameters (RFC 6749 §4.1.2, §10.12; RFC 9207).
fn expected(params: &[(Key, String)], state: &str) -> fuzzing::Outcome {
    let known = ["code", "state", "iss", "error", "error_description"];
    let value = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k.name() == name)
            .map(|(_, v)| v.clone())
    };
    for name in known {
        if params.iter().filter(|(k, _)| k.name() == name).count() > 1 {
            return None; // parameter pollution: refused as a whole
        }
    }
    if value("state").as_deref() != Some(state) {
        return None;
    }
    if let Some(error) = value("error") {
        return Some(Err(CallbackError::Denied {
            error: shown(&error, 100),
            description: value("error_description").map(|d| shown(&d, 500)),
        }));
    }
    match value("code") {
        Some(code) if !code.is_empty() => Some(Ok(fuzzing::Accepted {
            code,
            iss: value("iss"),
        })),
        _ => Some(Err(CallbackError::MissingCode)),
    }
}

/// Outcomes compared by what the login does with them (`CallbackError` is not `PartialEq`).
fn same(a: &fuzzing::Outcome, b: &fuzzing::Outcome) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(Ok(x)), Some(Ok(y))) => x == y,
        (Some(Err(CallbackError::MissingCode)), Some(Err(CallbackError::MissingCode))) => true,
        (
            Some(Err(CallbackError::Denied {
                error: e1,
                description: d1,
            })),
            Some(Err(CallbackError::Denied {
                error: e2,
                description: d2,
            })),
        ) => e1 == e2 && d1 == d2,
        _ => false,
    }
}

/// Neither secret appears in what the outcome tells the user.
fn no_secret_in_outcome(outcome: &fuzzing::Outcome, secrets: &[&str]) -> Result<(), TestCaseError> {
    if let Some(Err(e)) = outcome {
        let text = format!("{e} {e:?}");
        for s in secrets {
            prop_assert!(!text.contains(s), "secret in {}", text);
        }
    }
    Ok(())
}

/// Log lines of everything `f` runs (it gets a current-thread runtime, so every spawned task
/// logs through this subscriber too).
fn with_logs<T>(f: impl FnOnce(&tokio::runtime::Runtime) -> T) -> (T, String) {
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("log buffer").extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buffer = Buffer::default();
    let writer = buffer.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let result = tracing::subscriber::with_default(subscriber, || f(&runtime));
    let logs = String::from_utf8_lossy(&buffer.0.lock().expect("log buffer")).into_owned();
    (result, logs)
}

/// One HTTP request to the loopback listener, and whether it is a plain `GET /callback` that
/// hyper must hand to the login as is.
fn http_request(query: String) -> impl Strategy<Value = (Vec<u8>, bool)> {
    let method = prop_oneof![
        8 => Just(("GET", true)),
        1 => Just(("POST", false)),
        1 => Just(("HEAD", false)),
        1 => Just(("get", false)),
        1 => Just(("G\u{0}T", false)),
    ];
    let path = prop_oneof![
        8 => Just(("/callback", true)),
        1 => Just(("http://127.0.0.1:54783/callback", true)),
        1 => Just(("/callback/", false)),
        1 => Just(("/CALLBACK", false)),
        1 => Just(("/other", false)),
        1 => Just(("/%63allback", false)),
        1 => Just(("*", false)),
    ];
    let version = prop_oneof![
        8 => Just(("HTTP/1.1", true)),
        1 => Just(("HTTP/1.0", true)),
        1 => Just(("HTTP/2.0", false)),
        1 => Just(("HTTP/1.1 extra", false)),
    ];
    let header = prop_oneof![
        4 => Just(("Host: 127.0.0.1:54783".to_string(), true)),
        1 => "X-[A-Za-z]{1,8}: [ -~]{0,40}".prop_map(|h| (h, true)),
        1 => Just((format!("X-Big: {}", "a".repeat(17 * 1024)), false)),
        1 => Just(("Bad Header\u{1}: x".to_string(), false)),
        1 => Just(("Content-Length: 5\r\n\r\nhello".to_string(), false)),
        1 => Just(("Transfer-Encoding: chunked".to_string(), false)),
    ];
    let eol = prop_oneof![4 => Just("\r\n"), 1 => Just("\n")];
    (
        method,
        path,
        version,
        proptest::collection::vec(header, 0..4),
        eol,
    )
        .prop_map(move |((m, m_ok), (p, p_ok), (v, v_ok), headers, eol)| {
            let mut text = format!("{m} {p}?{query} {v}{eol}");
            let mut clean = m_ok && p_ok && v_ok && eol == "\r\n";
            for (h, ok) in headers {
                text.push_str(&h);
                text.push_str(eol);
                clean &= ok;
            }
            text.push_str(eol);
            (text.into_bytes(), clean)
        })
}

proptest! {
    #![proptest_config(cases(512))]

    /// The state check on any parameter list: exactly the RFC's rules, nothing else accepted.
    #[test]
    fn the_query_is_judged_by_the_rules(
        ((state, _code), params) in secrets().prop_flat_map(|(s, c)| (Just((s.clone(), c.clone())), params(s, c))),
    ) {
        let got = fuzzing::judge_query(Some(&encode(&params)), &state);
        let want = expected(&params, &state);
        prop_assert!(same(&got, &want), "{:?}: got {:?}, want {:?}", params, got, want);
    }

    /// Raw query text (unencoded, `+`, stray `%`, invalid UTF-8 escapes): never a panic, and
    /// nothing is accepted without this login's state.
    #[test]
    fn raw_queries_never_accept_without_the_state(
        (state, query) in ("st_[A-Za-z0-9]{20,40}", prop_oneof![
            any::<String>(),
            "([a-z_]{0,6}=?[ -~]{0,10}&?){0,6}",
            "(code|state|error)=(%[0-9A-Fa-f]{0,2}|\\+|[a-z]){0,6}(&(code|state)=[a-z%+]{0,6}){0,3}",
        ]),
    ) {
        let got = fuzzing::judge_query(Some(&query), &state);
        prop_assert!(got.is_none(), "{:?} accepted without the state", query);
        let with_state = format!("{query}&state={state}");
        if let Some(Ok(accepted)) = fuzzing::judge_query(Some(&with_state), &state) {
            prop_assert!(!accepted.code.is_empty());
        }
    }
}

proptest! {
    #![proptest_config(cases(96))]

    /// Requests to the loopback listener, through hyper and the handler: a plain
    /// `GET /callback` is judged by its query; anything else never ends the login with a code
    /// it did not carry; no response and no log line ever repeats the code or the state; every
    /// page the listener writes carries its no-store and no-referrer headers.
    #[test]
    fn loopback_requests_are_parsed_and_judged(
        ((state, code), requests, cut) in secrets().prop_flat_map(|(s, c)| {
            let one = params(s.clone(), c.clone()).prop_flat_map(|p| {
                let q = encode(&p);
                (Just(p), http_request(q))
            });
            (Just((s, c)), proptest::collection::vec(one, 1..4), proptest::option::weighted(0.2, any::<prop::sample::Index>()))
        }),
        garbage in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let mut raw: Vec<u8> = requests.iter().flat_map(|(_, (bytes, _))| bytes.clone()).collect();
        if let Some(at) = cut {
            raw.truncate(at.index(raw.len() + 1));
        }
        raw.extend_from_slice(&garbage);
        let ((response, outcome), logs) = with_logs(|rt| rt.block_on(fuzzing::loopback(&raw, &state)));

        let (first_params, (_, first_clean)) = &requests[0];
        if requests.len() == 1 && *first_clean && cut.is_none() && garbage.is_empty() {
            let want = expected(first_params, &state);
            prop_assert!(same(&outcome, &want), "got {:?}, want {:?}", outcome, want);
        }
        if let Some(Ok(accepted)) = &outcome {
            // Only ever a code one of the requests carried, with this login's state.
            let carried = requests.iter().any(|(p, _)| {
                matches!(expected(p, &state), Some(Ok(a)) if a == *accepted)
            });
            prop_assert!(carried, "{:?} was never sent", accepted);
        }
        no_secret_in_outcome(&outcome, &[&code, &state])?;
        // The capture works: a decided login always says so in the log.
        prop_assert!(outcome.is_none() || logs.contains("sign-in") || logs.contains("authorization response"), "{}", logs);
        let text = String::from_utf8_lossy(&response);
        for secret in [&code, &state] {
            prop_assert!(!text.contains(secret.as_str()), "secret in the response");
            prop_assert!(!logs.contains(secret.as_str()), "secret in the log: {}", logs);
        }
        for page in text.split("HTTP/1.").skip(1) {
            if page.contains("text/html") {
                prop_assert!(page.contains("cache-control: no-store"), "{}", page);
                prop_assert!(page.contains("referrer-policy: no-referrer"), "{}", page);
            }
        }
    }

    /// Arbitrary bytes on the loopback port: hyper answers or drops them, the login keeps
    /// waiting (no state, no outcome), nothing panics.
    #[test]
    fn garbage_on_the_loopback_port_changes_nothing(
        raw in prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..2048),
            "(GET|POST|[A-Z]{1,5}) [ -~]{0,40} HTTP/1\\.[01]\r\n([A-Za-z-]{1,10}: [ -~]{0,20}\r\n){0,5}\r\n".prop_map(String::into_bytes),
        ],
    ) {
        let ((_, outcome), _) = with_logs(|rt| rt.block_on(fuzzing::loopback(&raw, "st_the-state-of-this-login")));
        prop_assert!(outcome.is_none(), "{:?}", outcome);
    }
}

/// A pasted line: an address (this redirect URI or a near miss) with a query, padded with
/// whitespace, sometimes over-long, or junk.
fn pasted_line(query: String) -> impl Strategy<Value = (Vec<u8>, bool)> {
    let base = prop_oneof![
        6 => Just((fuzzing::REDIRECT_URI.to_string(), true)),
        1 => Just(("HTTP://127.0.0.1:54783/callback".to_string(), true)),
        1 => Just(("http://127.0.0.1:54783/callback/".to_string(), false)),
        1 => Just(("http://127.0.0.1:1/callback".to_string(), false)),
        1 => Just(("http://localhost:54783/callback".to_string(), false)),
        1 => Just(("https://127.0.0.1:54783/callback".to_string(), false)),
        1 => Just(("samay://callback".to_string(), false)),
    ];
    let ws = prop_oneof![Just(""), Just(" "), Just("\t "), Just("\r")];
    let tail = prop_oneof![6 => Just(String::new()), 1 => Just("#fragment".to_string()), 1 => Just(format!("&pad={}", "p".repeat(17 * 1024)))];
    prop_oneof![
        8 => (base, ws.clone(), tail, ws).prop_map(move |((b, right), w1, t, w2)| {
            let line = format!("{w1}{b}?{query}{t}{w2}");
            let fits = line.len() < 16 * 1024;
            (line.into_bytes(), right && fits)
        }),
        1 => proptest::collection::vec(any::<u8>().prop_filter("one line", |b| *b != b'\n'), 0..100).prop_map(|b| (b, false)),
    ]
}

proptest! {
    #![proptest_config(cases(64))]

    /// Lines pasted at the `--no-browser` prompt: the first line that is this redirect URI and
    /// decides this login is the outcome; near-miss addresses, over-long lines and junk change
    /// nothing; no log line repeats a secret.
    #[test]
    fn pasted_lines_are_judged_like_callbacks(
        ((state, code), lines) in secrets().prop_flat_map(|(s, c)| {
            let one = params(s.clone(), c.clone()).prop_flat_map(|p| {
                let q = encode(&p);
                (Just(p), pasted_line(q))
            });
            (Just((s, c)), proptest::collection::vec(one, 1..5))
        }),
    ) {
        let mut input = Vec::new();
        for (_, (line, _)) in &lines {
            input.extend_from_slice(line);
            input.push(b'\n');
        }
        let (outcome, logs) = with_logs(|rt| rt.block_on(fuzzing::paste(&input, &state)));
        let want = lines
            .iter()
            .filter(|(_, (_, right))| *right)
            .find_map(|(p, _)| expected(p, &state));
        prop_assert!(same(&outcome, &want), "got {:?}, want {:?}", outcome, want);
        no_secret_in_outcome(&outcome, &[&code, &state])?;
        prop_assert!(outcome.is_none() || logs.contains("sign-in") || logs.contains("authorization response"), "{}", logs);
        prop_assert!(!logs.contains(&code) && !logs.contains(&state), "secret in the log: {}", logs);
    }

    /// What `--callback <url>` hands over the deep-link socket: judged like a callback when it
    /// is this login's URI; the answer line says ok only for an accepted code, and neither it
    /// nor the log repeats a secret.
    #[test]
    fn deep_link_lines_are_judged_like_callbacks(
        ((state, code), params, base, newline) in secrets().prop_flat_map(|(s, c)| (
            Just((s.clone(), c.clone())),
            params(s, c),
            prop_oneof![
                4 => Just(("samay://callback", true)),
                1 => Just(("samay://callback/", true)),
                1 => Just(("SAMAY://CALLBACK", true)),
                1 => Just(("samay://other", false)),
                1 => Just(("samay:callback", false)),
                1 => Just((fuzzing::REDIRECT_URI, false)),
            ],
            any::<bool>(),
        )),
    ) {
        let ((base, right), query) = (base, encode(&params));
        let line = format!("{base}?{query}{}", if newline { "\n" } else { "" });
        let ((ack, outcome), logs) = with_logs(|rt| rt.block_on(fuzzing::deep_link(line.as_bytes(), &state)));
        let want = if right { expected(&params, &state) } else { None };
        prop_assert!(same(&outcome, &want), "got {:?}, want {:?}", outcome, want);
        let ack = String::from_utf8_lossy(&ack);
        prop_assert_eq!(ack.starts_with("ok "), matches!(outcome, Some(Ok(_))), "{}", ack);
        prop_assert!(ack.starts_with("ok ") || ack.starts_with("error "), "{}", ack);
        no_secret_in_outcome(&outcome, &[&code, &state])?;
        for secret in [&code, &state] {
            prop_assert!(!ack.contains(secret.as_str()), "secret in the answer: {}", ack);
            prop_assert!(!logs.contains(secret.as_str()), "secret in the log: {}", logs);
        }
    }

    /// `--callback <url>` refuses empty, multi-line and over-long URLs, and anything that is
    /// not a URL with a state and a code (or error), before looking for a login, naming the
    /// URL without its query; a plausible URL with no login waiting is "no login".
    #[test]
    fn callback_argument_errors_never_repeat_the_response(
        (state, code) in secrets(),
        shape in 0usize..6,
        noise in nasty_text(),
    ) {
        let url = match shape {
            0 => format!("samay://callback?code={code}&state={state}"),
            1 => format!("samay://callback?code={code}\n&state={state}"),
            2 => format!("samay://callback?code={code}&state={state}\r{noise}"),
            3 => format!("samay://callback?code={code}&state={state}&pad={}", "p".repeat(17 * 1024)),
            4 => format!("{noise}?code={code}#state={state}"),
            _ => "  \n ".to_string(),
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let nowhere = dir.path().join("no-login-here");
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let result = runtime.block_on(callback::deliver_in(&nowhere, &url));
        let trimmed = url.trim();
        let plausible = url::Url::parse(trimmed).is_ok_and(|u| {
            let has = |name: &str| u.query_pairs().any(|(k, _)| k == name);
            has("state") && (has("code") || has("error"))
        });
        let refused = trimmed.is_empty()
            || trimmed.len() > 16 * 1024
            || trimmed.contains(['\n', '\r'])
            || !plausible;
        prop_assert!(shape != 0 || !refused, "a real callback URL is plausible: {:?}", url);
        match &result {
            Err(DeliverError::BadUrl { shown, .. }) => {
                prop_assert!(refused, "{:?} refused", url);
                prop_assert!(!shown.contains('?'), "{:?}", shown);
                prop_assert!(shown.chars().count() <= 81);
            }
            Err(DeliverError::NoLogin) => prop_assert!(!refused, "{:?} passed", url),
            other => prop_assert!(false, "{other:?}"),
        }
        if let Err(e) = &result {
            let text = format!("{e} {e:?}");
            prop_assert!(!text.contains(&code) && !text.contains(&state), "secret in {}", text);
        }
    }
}

proptest! {
    #![proptest_config(cases(12))]

    /// The real listener on a real port: hostile requests first (wrong state, duplicated
    /// state, other paths and methods, oversized heads, garbage), each on its own connection,
    /// then the real callback — which alone ends the login, with its code.
    #[test]
    fn hostile_connections_do_not_stop_the_real_callback(
        ((state, code), hostile) in secrets().prop_flat_map(|(s, c)| {
            let attack = prop_oneof![
                Just(b"GET /callback?code=EVIL&state=st_not-this-one HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
                Just(format!("GET /callback?code=EVIL&state={s}&state={s} HTTP/1.1\r\nHost: x\r\n\r\n").into_bytes()),
                Just(format!("POST /callback?code=EVIL&state={s} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n").into_bytes()),
                Just(format!("GET /other?code=EVIL&state={s} HTTP/1.1\r\nHost: x\r\n\r\n").into_bytes()),
                Just(format!("GET /callback?code=EVIL&state={s} HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(20 * 1024)).into_bytes()),
                proptest::collection::vec(any::<u8>(), 0..256),
            ];
            (Just((s, c)), proptest::collection::vec(attack, 0..5))
        }),
    ) {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
        let accepted = runtime.block_on(async {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let cfg = AuthConfig {
                redirect_uri: "http://127.0.0.1:0/callback".into(),
                callback: CallbackMode::Loopback,
                ..AuthConfig::default()
            };
            let options = callback::CallbackOptions { progress: false, ..Default::default() };
            let mut waiter = callback::CallbackWaiter::start(&cfg, options).await.expect("listens");
            let addr = waiter.local_addr().expect("loopback");
            let expected_state = state.clone();
            let waiting = tokio::spawn(async move {
                let result = waiter.wait(&expected_state, Duration::from_secs(30)).await;
                match result {
                    Ok(pending) => {
                        let code = pending.code.clone();
                        pending.finish(callback::Finish::Success { username: "u".into() }).await;
                        Ok(code)
                    }
                    Err(e) => Err(e.to_string()),
                }
            });
            for attack in &hostile {
                let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
                let _ = stream.write_all(attack).await;
                let _ = stream.shutdown().await;
                // Read the answer (or the close) so each attack is fully handled before the next.
                let mut sink = Vec::new();
                let _ = tokio::time::timeout(Duration::from_secs(15), stream.read_to_end(&mut sink)).await;
            }
            let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
            let request = format!("GET /callback?code={code}&state={state} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
            stream.write_all(request.as_bytes()).await.expect("send");
            let mut answer = Vec::new();
            let _ = stream.read_to_end(&mut answer).await;
            (waiting.await.expect("no panic"), String::from_utf8_lossy(&answer).into_owned())
        });
        let (result, answer) = accepted;
        prop_assert_eq!(result, Ok(code.clone()));
        prop_assert!(answer.starts_with("HTTP/1.1 200"), "{}", answer);
        prop_assert!(!answer.contains(&code));
    }
}

// ---------------------------------------------------------------------------------------------
// The token endpoint's answers and the stored tokens
// ---------------------------------------------------------------------------------------------

fn jwt(claims: &Value) -> String {
    use base64::Engine as _;
    let b64 = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
    format!(
        "{}.{}.sig",
        b64(b"{\"alg\":\"none\"}"),
        b64(claims.to_string().as_bytes())
    )
}

fn claims() -> impl Strategy<Value = Value> {
    let field = || {
        proptest::option::of(
            prop_oneof![4 => nasty_text().prop_map(Value::String), 1 => Just(json!(5)), 1 => Just(Value::Null)],
        )
    };
    (field(), field(), field(), field()).prop_map(|(sub, preferred_username, email, name)| {
        let mut m = Map::new();
        for (k, v) in [
            ("sub", sub),
            ("preferred_username", preferred_username),
            ("email", email),
            ("name", name),
        ] {
            if let Some(v) = v {
                m.insert(k.into(), v);
            }
        }
        Value::Object(m)
    })
}

/// A token endpoint answer: the fields right, mistyped, missing or extreme.
fn token_answer() -> impl Strategy<Value = (Value, String)> {
    let expires_in = prop_oneof![
        3 => (0u64..100_000).prop_map(|n| json!(n)),
        1 => (0u32..20).prop_map(|e| json!(10u64.pow(e))),
        1 => any::<u64>().prop_map(|n| json!(n)),
        1 => Just(json!(-1)),
        1 => Just(json!(1.5)),
        1 => Just(json!("3600")),
        1 => Just(Value::Null),
    ];
    let id_token = prop_oneof![
        3 => claims().prop_map(|c| json!(jwt(&c))),
        1 => nasty_text().prop_map(Value::String),
        1 => claims().prop_map(|c| json!(format!("{}==", jwt(&c)))),
        1 => Just(json!("a.!!!.c")),
        1 => Just(json!(7)),
    ];
    (
        "AT_[A-Za-z0-9]{12,30}",
        prop_oneof![4 => Just(json!("bearer")), 1 => Just(json!("Bearer")), 1 => Just(json!("mac")), 1 => Just(json!(1))],
        proptest::option::of(expires_in),
        proptest::option::of(prop_oneof![3 => "RT_[A-Za-z0-9]{12,30}".prop_map(Value::String), 1 => Just(json!(1))]),
        proptest::option::of(prop_oneof![3 => "[a-z]{1,6}( [a-z]{1,6}){0,3}".prop_map(Value::String), 1 => Just(json!(["a"]))]),
        proptest::option::of(id_token),
        any::<bool>(),
    )
        .prop_map(|(access, token_type, expires_in, refresh, scope, id_token, string_access)| {
            let mut m = Map::new();
            m.insert("access_token".into(), if string_access { json!(access) } else { json!({ "v": access }) });
            m.insert("token_type".into(), token_type);
            for (k, v) in [("expires_in", expires_in), ("refresh_token", refresh), ("scope", scope), ("id_token", id_token)] {
                if let Some(v) = v {
                    m.insert(k.into(), v);
                }
            }
            (Value::Object(m), access)
        })
}

proptest! {
    #![proptest_config(cases(256))]

    /// Token answers as the login and the refresh read them: never a panic (an `expires_in`
    /// past chrono's range is "no expiry"); what is kept is what was sent.
    #[test]
    fn token_answers_are_read_or_refused(
        (answer, access) in token_answer(),
        previous in proptest::option::of("RT_old[a-z]{4}"),
        now in (0i64..4_000_000_000).prop_map(|s| Utc.timestamp_opt(s, 0).single().expect("in range")),
    ) {
        let body = answer.to_string();
        let result = tokens_from_answer(body.as_bytes(), previous.as_deref(), now);
        let well_formed = answer["access_token"].is_string()
            && answer["token_type"].is_string()
            && answer.get("expires_in").map_or(true, |v| v.is_u64() || v.is_null())
            && answer.get("refresh_token").map_or(true, Value::is_string)
            && answer.get("scope").map_or(true, Value::is_string)
            && answer.get("id_token").map_or(true, Value::is_string);
        match result {
            Ok(t) => {
                prop_assert!(well_formed, "accepted {}", body);
                prop_assert_eq!(&t.access_token, &access);
                match answer.get("expires_in").and_then(Value::as_u64) {
                    Some(secs) => {
                        let want = chrono::Duration::try_seconds(secs as i64)
                            .filter(|_| secs <= i64::MAX as u64 / 1000)
                            .and_then(|d| now.checked_add_signed(d));
                        prop_assert_eq!(t.expires_at, want, "expires_in {}", secs);
                    }
                    None => prop_assert_eq!(t.expires_at, None),
                }
                let sent_refresh = answer.get("refresh_token").and_then(Value::as_str).map(String::from);
                prop_assert_eq!(&t.refresh_token, &sent_refresh.or(previous));
                let debug = format!("{t:?}");
                prop_assert!(!debug.contains(&access), "{}", debug);
            }
            Err(_) => prop_assert!(!well_formed, "refused {}", body),
        }
    }
}

fn stored(access: &str, refresh: &str) -> StoredTokens {
    StoredTokens {
        access_token: access.into(),
        refresh_token: Some(refresh.into()),
        expires_at: Some(
            Utc.timestamp_opt(1_800_000_000, 0)
                .single()
                .expect("in range"),
        ),
        scope: Some("openid".into()),
        id_token: Some(format!("id.{access}.sig")),
        subject: Some("alice".into()),
        username: Some("alice".into()),
        issuer: "https://id.example".into(),
        client_id: "c".into(),
        obtained_at: Utc
            .timestamp_opt(1_700_000_000, 0)
            .single()
            .expect("in range"),
    }
}

proptest! {
    #![proptest_config(cases(96))]

    /// A tokens file edited, truncated or corrupted: loads as what it says, or is "unreadable"
    /// without quoting any of it (serde would quote a mistyped token).
    #[test]
    fn a_corrupt_tokens_file_never_quotes_a_secret(
        (access, refresh) in ("AT_[A-Za-z0-9]{12,30}", "RT_[A-Za-z0-9]{12,30}"),
        field in proptest::sample::select(&["access_token", "refresh_token", "expires_at", "obtained_at", "issuer", "client_id", "scope", "id_token"][..]),
        change in 0usize..6,
        cut in any::<prop::sample::Index>(),
    ) {
        let tokens = stored(&access, &refresh);
        let mut value = serde_json::to_value(&tokens).expect("serializes");
        let bytes: Vec<u8> = match change {
            0 => { value[field] = json!(format!("Bearer {access}")); value.to_string().into_bytes() }
            1 => { value[field] = json!([refresh.clone()]); value.to_string().into_bytes() }
            2 => { value[field] = json!(1e300); value.to_string().into_bytes() }
            3 => { let s = value.to_string(); s.as_bytes()[..cut.index(s.len())].to_vec() }
            4 => { let mut b = value.to_string().into_bytes(); b.insert(cut.index(b.len()), 0xff); b }
            _ => { value.as_object_mut().expect("object").remove(field); value.to_string().into_bytes() }
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let loaded = runtime.block_on(async {
            let account = Account { issuer: "https://id.example".into(), client_id: "c".into() };
            let store = TokenStore::open(TokenStorage::File, account, dir.path()).await.expect("file store");
            let path = store.file_path().expect("a file").to_path_buf();
            std::fs::create_dir_all(path.parent().expect("dir")).expect("mkdir");
            std::fs::write(&path, &bytes).expect("write");
            store.load().await
        });
        match loaded {
            Ok(Some(t)) => {
                let back = serde_json::to_vec(&t).expect("serializes");
                let again: StoredTokens = serde_json::from_slice(&back).expect("round trip");
                prop_assert_eq!(&again, &t);
                let direct = serde_json::from_slice::<StoredTokens>(&bytes).ok();
                prop_assert_eq!(direct.as_ref(), Some(&t));
            }
            Ok(None) => prop_assert!(false, "a written file read as none"),
            Err(e @ StoreError::Corrupt { .. }) => {
                let text = format!("{e} {e:?}");
                prop_assert!(!text.contains(&access) && !text.contains(&refresh), "{}", text);
                prop_assert!(serde_json::from_slice::<StoredTokens>(&bytes).is_err());
            }
            Err(e) => prop_assert!(false, "{e}"),
        }
    }
}
