//! `--logout`: revokes the session at the provider and deletes the stored tokens; the sync
//! state is kept, so the next login resumes where the sync stopped.

use std::process::ExitCode;

use anyhow::bail;
use aw_sync_samay::auth::oauth;

use super::tokens::open_token_store;
use super::Loaded;

pub async fn run(cx: &Loaded<'_>) -> anyhow::Result<ExitCode> {
    let auth = &cx.config.auth;
    if !oauth::login_configured(auth) {
        bail!(
            "the login is not configured in {}: nothing to log out of",
            cx.config_path.display()
        );
    }
    let store = open_token_store(auth).await?;
    let report = oauth::logout(auth, &store).await?;
    if !report.had_tokens {
        println!("Not logged in: nothing stored in {}.", store.describe());
        return Ok(ExitCode::SUCCESS);
    }
    match &report.revoked {
        Some(Ok(())) => println!("Revoked the session at the provider."),
        Some(Err(why)) => println!(
            "Could not revoke the session at the provider ({why}); it ends when its tokens expire."
        ),
        None => match &report.no_endpoint {
            Some(why) => println!("Not revoked: {why}."),
            None => println!("Not revoked at the provider."),
        },
    }
    if report.deleted {
        println!("Deleted the stored tokens from {}.", store.describe());
    }
    println!("Sync state and cursors are kept: the next login resumes where the sync stopped.");
    Ok(ExitCode::SUCCESS)
}
