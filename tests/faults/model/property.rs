//! The property itself: any sequence of ops leaves the upstream holding what the model allows.

use std::time::Duration;

use proptest::prelude::*;

use super::harness::*;
use super::ops::*;

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(64)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        max_shrink_iters: 256,
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::WithSource("proptest-regressions"),
        )),
        ..ProptestConfig::default()
    })]

    #[test]
    fn the_upstream_ends_up_holding_what_the_model_allows(
        ops in prop::collection::vec(op_strategy(), 5..40)
    ) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let result = rt.block_on(run(ops));
        rt.shutdown_timeout(Duration::from_secs(5));
        prop_assert!(result.is_ok(), "{}", result.unwrap_err());
    }
}
