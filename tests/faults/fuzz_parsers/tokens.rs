//! The token endpoint's answers and the stored tokens.

use aw_sync_samay::auth::oauth::tokens_from_answer;
use aw_sync_samay::auth::store::{StoreError, TokenStore};
use aw_sync_samay::auth::tokens::{Account, StoredTokens};
use aw_sync_samay::config::TokenStorage;
use chrono::TimeZone;
use chrono::Utc;
use proptest::prelude::*;
use serde_json::{json, Map, Value};

use super::support::*;

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
