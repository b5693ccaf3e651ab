//! Raw bytes as one connection to the login's loopback listener: hyper's request parser, the
//! callback handler and the state check, in memory. Hangs show as libFuzzer timeouts.
#![no_main]

use aw_sync_samay::auth::callback::fuzzing;
use libfuzzer_sys::fuzz_target;

const STATE: &str = "st_fuzz-state";

thread_local! {
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
}

fuzz_target!(|raw: &[u8]| {
    let (response, outcome) = RUNTIME.with(|rt| rt.block_on(fuzzing::loopback(raw, STATE)));
    if let Some(Ok(accepted)) = &outcome {
        // Nothing is accepted without this login's state, and never an empty code.
        assert!(!accepted.code.is_empty());
        assert!(
            raw.windows(STATE.len() - 3)
                .any(|w| w == &STATE.as_bytes()[3..])
                || raw.windows(3).any(|w| w[0] == b'%'),
            "accepted without the state"
        );
    }
    if !raw.is_empty() && outcome.is_some() {
        assert!(!response.is_empty(), "a decided request got no answer");
    }
});
