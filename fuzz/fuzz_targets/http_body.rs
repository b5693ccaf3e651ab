//! Any answer body — any size, in any chunks, with a true, lying or missing `Content-Length` —
//! through the capped reader every client of outside answers uses (issue 11: an endless body
//! on aw-server's `/api/0/info` grew memory to 1.8 GB): whole up to the limit, refused past
//! it, having taken at most the limit and one chunk from the peer.
#![no_main]

use aw_sync_samay::http_body::{read_chunks, BodyError};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Body {
    chunks: Vec<Vec<u8>>,
    /// Each chunk sent this many times more (an amplified, long body).
    repeat: u8,
    limit: u16,
    announced: Option<u32>,
}

fuzz_target!(|b: Body| {
    let mut chunks = Vec::new();
    for _ in 0..=b.repeat {
        chunks.extend(b.chunks.iter().cloned());
    }
    let total: usize = chunks.iter().map(Vec::len).sum();
    let biggest = chunks.iter().map(Vec::len).max().unwrap_or(0);
    let whole = chunks.concat();
    let limit = usize::from(b.limit);
    let announced = b.announced.map(u64::from);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let (result, taken) = runtime.block_on(read_chunks(chunks, announced, limit));
    let refused_up_front = announced.is_some_and(|a| a > limit as u64);
    match result {
        Ok(body) => {
            assert!(!refused_up_front && total <= limit);
            assert_eq!(body, whole);
        }
        Err(BodyError::TooLarge { limit: l }) => {
            assert_eq!(l, limit);
            assert!(refused_up_front || total > limit);
            assert!(taken <= (limit + biggest) as u64);
            if refused_up_front {
                assert_eq!(taken, 0);
            }
        }
        Err(e) => panic!("{e}"),
    }
});
