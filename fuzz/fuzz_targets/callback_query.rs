//! The state check alone, on any query string: the fastest way to explore parameter parsing.
#![no_main]

use aw_sync_samay::auth::callback::fuzzing;
use libfuzzer_sys::fuzz_target;

const STATE: &str = "st_fuzz-state";

fuzz_target!(|raw: &[u8]| {
    let query = String::from_utf8_lossy(raw);
    let outcome = fuzzing::judge_query(Some(&query), STATE);
    if outcome.is_some() {
        // Decisive only with exactly this login's state among the decoded parameters.
        let states: Vec<_> = url::form_urlencoded::parse(query.as_bytes())
            .filter(|(k, _)| k == "state")
            .collect();
        assert_eq!(states.len(), 1, "{query:?}");
        assert_eq!(states[0].1, STATE, "{query:?}");
    }
    if let Some(Ok(accepted)) = outcome {
        assert!(!accepted.code.is_empty());
    }
});
