//! Any `Retry-After` value: delta-seconds exactly, an HTTP-date as the wait until then.
#![no_main]

use std::time::{Duration, SystemTime};

use aw_sync_samay::upstream::client::parse_retry_after;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|value: &str| {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let got = parse_retry_after(value, now);
    let v = value.trim();
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        let want = v
            .parse::<u64>()
            .map_or(Duration::from_secs(u64::MAX), Duration::from_secs);
        assert_eq!(got, Some(want));
    }
});
