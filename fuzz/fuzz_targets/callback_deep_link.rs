//! Raw bytes written to the deep-link socket (what `--callback <url>` sends), through the line
//! reader and the state check, in memory.
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
    let (ack, outcome) = RUNTIME.with(|rt| rt.block_on(fuzzing::deep_link(raw, STATE)));
    let ack = String::from_utf8_lossy(&ack);
    // Every connection that sent something gets one answer line; "ok" only for a code.
    assert!(
        ack.is_empty() || ack.starts_with("ok ") || ack.starts_with("error "),
        "{ack:?}"
    );
    assert_eq!(
        ack.starts_with("ok "),
        matches!(outcome, Some(Ok(_))),
        "{ack:?}"
    );
    assert_eq!(
        ack.matches('\n').count(),
        usize::from(!ack.is_empty()),
        "{ack:?}"
    );
});
