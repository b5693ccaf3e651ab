//! Any answer to a batch (status, Retry-After, Location, body) through the upstream client's
//! classification: the caller's next step, never the token in a message.
#![no_main]

use aw_sync_samay::auth::AccessToken;
use aw_sync_samay::upstream::client::batch_outcome;
use aw_sync_samay::upstream::UpstreamError;
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Answer<'a> {
    status: u16,
    retry_after: Option<&'a str>,
    location: Option<&'a str>,
    events: u8,
    /// Echo the token somewhere in the body.
    echo: Option<(u16, u8)>,
    body: &'a [u8],
}

const TOKEN: &str = "fuzz-token-0123456789";

fuzz_target!(|a: Answer<'_>| {
    let mut body = a.body.to_vec();
    if let Some((at, shape)) = a.echo {
        let at = usize::from(at).min(body.len());
        let echo = match shape % 3 {
            0 => TOKEN.to_string(),
            1 => format!("\"{TOKEN}\""),
            _ => format!("\"Bearer {TOKEN}\""),
        };
        body.splice(at..at, echo.into_bytes());
    }
    let events = usize::from(a.events);
    let token = AccessToken::new(TOKEN);
    let Some(outcome) = batch_outcome(a.status, a.retry_after, a.location, &body, events, &token)
    else {
        assert!(!(100..1000).contains(&a.status));
        return;
    };
    match outcome {
        Ok(_) => assert!((200..300).contains(&a.status)),
        Err(e) => {
            let text = format!("{e} {e:?}");
            assert!(!text.contains(TOKEN), "{text}");
            if let UpstreamError::Rejected {
                rejected: Some(idx),
                ..
            } = &e
            {
                assert!(!idx.is_empty());
                assert!(idx.windows(2).all(|w| w[0] < w[1]));
                assert!(idx.iter().all(|&i| i < events));
            }
        }
    }
});
