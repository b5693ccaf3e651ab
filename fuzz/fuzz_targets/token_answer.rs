//! Any token endpoint answer, read as the login and the refresh read it.
#![no_main]

use aw_sync_samay::auth::oauth::tokens_from_answer;
use chrono::TimeZone;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    let now = chrono::Utc
        .timestamp_opt(1_700_000_000, 0)
        .single()
        .expect("a valid instant");
    if let Ok(t) = tokens_from_answer(body, Some("previous-refresh"), now) {
        assert!(t.expires_at.is_none_or(|e| e >= now));
        assert!(
            t.refresh_token.is_some(),
            "the previous refresh token is kept"
        );
        assert!(format!("{t:?}").contains("<redacted>"));
    }
});
