//! Raw bytes typed at the `--no-browser` paste prompt, through the paste reader and the
//! state check, in memory.
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
    let outcome = RUNTIME.with(|rt| rt.block_on(fuzzing::paste(raw, STATE)));
    if outcome.is_some() {
        let text = String::from_utf8_lossy(raw);
        assert!(
            text.contains(&STATE[3..]) || text.contains('%'),
            "decided without the state"
        );
    }
});
