//! Issue 11, point 7: an upstream `error` of "\e[2J\e]0;pwned\a" was written raw to stderr
//! and the log — clearing the screen and retitling the terminal of whoever read it. The real
//! binary against an upstream that answers so: stderr, the log file and `--status` show the
//! text with its control characters as visible escapes, and never the characters themselves.

use chrono::Utc;
use samay_aw_double::{AwDouble, AwDoubleConfig};

use samay_testkit::bin::{sync_command, write_config};
use samay_testkit::hostile::{Answer, Hostile};

const EVIL: &str = "\u{1b}[2J\u{1b}]0;pwned\u{7}";
const SHOWN: &str = "\\u{1b}[2J\\u{1b}]0;pwned\\u{7}";

fn assert_shown_safely(what: &str, text: &str) {
    assert!(
        !text.contains('\u{1b}') && !text.contains('\u{7}'),
        "{what} has raw control characters: {text:?}"
    );
    assert!(
        text.contains(SHOWN),
        "{what} shows the text escaped:\n{text}"
    );
}

#[tokio::test]
async fn an_upstreams_error_with_escape_sequences_reaches_no_terminal_or_log_raw() {
    let aw = AwDouble::spawn(AwDoubleConfig::default())
        .await
        .expect("double");
    aw.create_bucket("b", "t", "c", "h").expect("bucket");
    aw.insert(
        "b",
        &[samay_aw_double::Event::new(
            Utc::now() - chrono::Duration::minutes(5),
            1.0,
            serde_json::Map::new(),
        )],
    )
    .expect("insert");
    let body = serde_json::json!({ "error": EVIL }).to_string();
    // An upstream by its health check, whose every other answer is a 400 carrying the text.
    let upstream = Hostile::start(move |req| {
        if req.target.ends_with("/v1/health") {
            Answer::json(200, r#"{"ok":true}"#)
        } else {
            Answer::json(400, body.clone())
        }
    })
    .await;

    let home = tempfile::tempdir().expect("tempdir");
    let config = write_config(home.path(), &upstream.base_url(), "");
    let mut once = sync_command(home.path(), aw.port(), &config, "token");
    once.arg("--once");
    let out = tokio::task::spawn_blocking(move || once.output())
        .await
        .expect("task")
        .expect("runs");
    assert!(!out.status.success(), "the upstream refused everything");
    assert_shown_safely("stderr", &String::from_utf8_lossy(&out.stderr));

    let logs = home.path().join("cache/activitywatch/log/aw-sync-samay");
    let log = std::fs::read_dir(&logs)
        .expect("log dir")
        .map(|e| std::fs::read_to_string(e.expect("entry").path()).expect("read"))
        .collect::<String>();
    assert_shown_safely("the log file", &log);

    let mut status = sync_command(home.path(), aw.port(), &config, "token");
    status.arg("--status");
    let out = tokio::task::spawn_blocking(move || status.output())
        .await
        .expect("task")
        .expect("runs");
    assert_shown_safely("--status", &String::from_utf8_lossy(&out.stdout));
}
