//! `--callback URL`: the OS started this program for a deep link (`auth.callback = "deeplink"`).
//! It hands the URL to the login waiting for it and prints that login's answer.

use std::process::ExitCode;

use aw_sync_samay::auth::callback;

pub async fn run(url: &str) -> anyhow::Result<ExitCode> {
    let answer = callback::deliver(url).await?;
    println!("{answer}");
    Ok(ExitCode::SUCCESS)
}
