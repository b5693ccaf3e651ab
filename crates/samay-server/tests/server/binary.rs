//! The `samay-server` binary: configuration, refusals, `--dev`.

use std::process::Command;

use reqwest::StatusCode;

use crate::common::{Client, Process, ALICE};

fn run(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let home = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_samay-server"));
    cmd.args(args)
        .env("HOME", home.path())
        .env("XDG_DATA_HOME", home.path().join("data"))
        .env_remove("SAMAY_DATABASE_URL")
        .env_remove("SAMAY_ISSUER")
        .env_remove("SAMAY_BIND")
        .env_remove("SAMAY_STATIC_TOKENS");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn config_typos_and_unsafe_binds_are_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("samay.toml");
    std::fs::write(
        &config,
        "bind = \"127.0.0.1:0\"\ndatabse_url = \"sqlite:///tmp/x\"\n",
    )
    .unwrap();
    let (ok, out) = run(
        &["--config", config.to_str().unwrap()],
        &[("SAMAY_STATIC_TOKENS", crate::common::TOKENS)],
    );
    assert!(!ok);
    assert!(out.contains("databse_url"), "names the unknown key: {out}");
    std::fs::write(&config, "[limits]\nrate_per_minut = 5\n").unwrap();
    let (ok, out) = run(&["--config", config.to_str().unwrap()], &[]);
    assert!(!ok && out.contains("rate_per_minut"), "{out}");

    let (ok, out) = run(
        &["--bind", "0.0.0.0:0"],
        &[("SAMAY_STATIC_TOKENS", crate::common::TOKENS)],
    );
    assert!(!ok);
    assert!(out.contains("--behind-proxy"), "{out}");
    let (ok, out) = run(&["--dev", "--bind", "0.0.0.0:0"], &[]);
    assert!(!ok && out.contains("loopback"), "{out}");
    let (ok, out) = run(
        &["--database-url", "mysql://x"],
        &[("SAMAY_STATIC_TOKENS", crate::common::TOKENS)],
    );
    assert!(!ok && out.contains("sqlite://PATH or postgres://"), "{out}");
    let (ok, out) = run(&["--bind", "127.0.0.1:0"], &[]);
    assert!(
        !ok && out.contains("--issuer"),
        "no way to authenticate: {out}"
    );
}

/// Without `--dev` the dev endpoints do not exist; the default database is in the data dir.
#[tokio::test]
async fn the_server_has_no_dev_endpoints_and_keeps_its_data_in_the_data_dir() {
    let home = tempfile::tempdir().unwrap();
    let data = home.path().join("data");
    let data_str = data.to_str().unwrap().to_string();
    let home_str = home.path().to_str().unwrap().to_string();
    let proc = Process::start(&[], &[("HOME", &home_str), ("XDG_DATA_HOME", &data_str)]);
    let alice = Client::new(&proc.base, ALICE);
    assert_eq!(alice.get("v1/me").await.0, StatusCode::OK);
    for path in [
        "v1/inspect",
        "v1/inspect/events",
        "v1/_faults",
        "v1/_oauth",
        ".well-known/openid-configuration",
        "events",
    ] {
        assert_eq!(alice.get(path).await.0, StatusCode::NOT_FOUND, "{path}");
    }
    assert!(data.join("samay-server/samay.sqlite").is_file());
}

/// `--dev`: the dev server under the new name, inspection included.
#[tokio::test]
async fn dev_mode_is_the_dev_server() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("dev.sqlite").display());
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_samay-server"));
    cmd.args(["--dev", "--bind", "127.0.0.1:0", "--database-url", &db])
        .env("SAMAY_DEV_TOKEN", "dev-token-for-the-test")
        .stdout(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().unwrap()));
    let line = lines.next().unwrap().unwrap();
    let base = line
        .strip_prefix("samay-server --dev listening on ")
        .and_then(|rest| rest.split(' ').next())
        .unwrap_or_else(|| panic!("{line}"))
        .to_string();
    let dev = Client::new(&base, "dev-token-for-the-test");
    assert_eq!(dev.get("v1/me").await.1, serde_json::json!({"user": "dev"}));
    assert_eq!(dev.get("v1/inspect").await.0, StatusCode::OK);
    assert_eq!(
        dev.get(".well-known/openid-configuration").await.0,
        StatusCode::OK
    );
    let _ = child.kill();
    let _ = child.wait();
}

/// `systemd-analyze verify` of `unit` with ExecStart pointed at the built binary: what it says
/// (nothing when the unit is valid).
fn systemd_verify(unit: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("samay-server.service");
    let text = unit.replace(
        "/usr/local/bin/samay-server",
        env!("CARGO_BIN_EXE_samay-server"),
    );
    std::fs::write(&path, text).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze (scripts/install-peers.sh installs systemd)");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ) + if out.status.success() { "" } else { "(failed)" }
}

#[test]
fn the_systemd_unit_is_valid_and_stops_with_sigterm() {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../packaging/linux/samay-server.service"
    ))
    .unwrap();
    let said = systemd_verify(&unit);
    assert!(said.trim().is_empty(), "systemd-analyze verify: {said}");
    // The check can fail: a typo in a key's value is reported.
    assert!(!systemd_verify(&unit.replace("Type=exec", "Type=exce"))
        .trim()
        .is_empty());
    assert!(
        unit.contains("KillSignal=SIGTERM"),
        "SIGTERM drains in-flight requests"
    );
    assert!(unit.contains("ExecStart=/usr/local/bin/samay-server"));
}

/// The server's stderr after it started (with `args`, `env`), answered one request and was
/// stopped with SIGTERM.
async fn log_of_a_run(args: &[&str], env: &[(&str, &str)]) -> String {
    let home = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", home.path().join("s.sqlite").display());
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_samay-server"));
    cmd.args(["--bind", "127.0.0.1:0", "--database-url", &db])
        .args(args)
        .env("HOME", home.path())
        .env_remove("SAMAY_LOG_FORMAT")
        .env_remove("RUST_LOG")
        .env("SAMAY_STATIC_TOKENS", crate::common::TOKENS)
        .stderr(std::process::Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let (mut child, base) = samay_testkit::server::spawn_listening(cmd);
    let alice = Client::new(&base, ALICE);
    assert_eq!(alice.get("v1/me").await.0, StatusCode::OK);
    // SAFETY: a signal to our own child, which has not been waited for yet.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(child.wait().unwrap().success(), "{stderr}");
    stderr
}

/// `--log-format json`, `SAMAY_LOG_FORMAT=json` and `log_format = "json"` in the config file:
/// every log line is one JSON object with the time, level, target and the message's fields —
/// what a log pipeline parses. The default stays text for people.
#[tokio::test]
async fn json_logs_are_one_object_per_line_with_their_fields() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("samay.toml");
    std::fs::write(&config, "log_format = \"json\"\n").unwrap();
    let config = config.to_str().unwrap();
    for (args, env) in [
        (vec!["--log-format", "json"], vec![]),
        (vec![], vec![("SAMAY_LOG_FORMAT", "json")]),
        (vec!["--config", config], vec![]),
    ] {
        let log = log_of_a_run(&args, &env).await;
        let lines: Vec<serde_json::Value> = log
            .lines()
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("{args:?} {env:?}: not JSON ({e}): {l}"))
            })
            .collect();
        let listening = lines
            .iter()
            .find(|l| {
                l["fields"]["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("samay-server listening on http://127.0.0.1:"))
            })
            .unwrap_or_else(|| panic!("no 'listening' line in {log}"));
        assert_eq!(listening["level"], "INFO", "{listening}");
        assert!(listening["target"].as_str().is_some(), "{listening}");
        assert!(
            chrono::DateTime::parse_from_rfc3339(listening["timestamp"].as_str().unwrap_or(""))
                .is_ok(),
            "{listening}"
        );
        assert!(
            listening["fields"]["address"]
                .as_str()
                .is_some_and(|a| a.starts_with("127.0.0.1:")),
            "the event's fields are fields of the object: {listening}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l["fields"]["message"] == "stopping: draining in-flight requests"),
            "{log}"
        );
    }
    let text = log_of_a_run(&[], &[]).await;
    assert!(text.contains("samay-server listening on"), "{text}");
    assert!(
        text.lines()
            .all(|l| serde_json::from_str::<serde_json::Value>(l).is_err()),
        "text by default: {text}"
    );
}
