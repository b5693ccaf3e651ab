//! The login callback: query, loopback HTTP, paste-back, deep link, `--callback`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use aw_sync_samay::auth::callback::{self, fuzzing, CallbackError, DeliverError};
use aw_sync_samay::config::{AuthConfig, CallbackMode};
use proptest::prelude::*;

use super::support::*;

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
