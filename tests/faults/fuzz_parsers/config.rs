//! The config file: any text, every key mistyped or out of range, round trips of valid files.

use std::path::Path;

use aw_sync_samay::config::{
    self, AuthConfig, CallbackMode, Config, ConfigError, Gzip, RedactRule, SyncConfig,
    TokenStorage, TrayMode, UiConfig, MAX_LOOKBACK_SECS,
};
use chrono::TimeZone;
use chrono::Utc;
use proptest::prelude::*;

use super::support::*;

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
                (
                    max_retries,
                    offline_queue_size,
                    lookback,
                    page_size,
                    request_timeout,
                    upload_concurrency,
                ),
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
                upload_concurrency: upload_concurrency as usize,
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
        (1u64..=i64::MAX as u64, 0usize..3, 1usize..=16),
        proptest::collection::vec(pattern(), 0..3),
        proptest::collection::vec(pattern(), 0..3),
        start_from,
        proptest::collection::vec(rule, 0..3),
    )
        .prop_map(
            |(
                (enabled, base_url, sync_interval, batch_size),
                (max_retries, extra_queue, lookback, page_size),
                (request_timeout, gzip, upload_concurrency),
                include_buckets,
                exclude_buckets,
                start_from,
                redact,
            )| SyncConfig {
                enabled,
                base_url,
                sync_interval,
                batch_size,
                upload_concurrency,
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
