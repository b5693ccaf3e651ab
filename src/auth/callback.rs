//! TEMP STUB
use url::Url;
use std::time::Duration;
use crate::config::AuthConfig;
#[derive(Debug, thiserror::Error)]
pub enum CallbackError { #[error("x")] Timeout }
#[derive(Default)]
pub struct WaitOptions { pub paste_from_stdin: bool }
pub struct CallbackWaiter { u: Url }
pub struct PendingCallback { pub code: String, pub iss: Option<String> }
pub enum Finish { Success { username: String }, Failure { message: String, hint: String } }
impl CallbackWaiter {
  pub async fn start(_c: &AuthConfig, _o: WaitOptions) -> Result<Self, CallbackError> { todo!() }
  pub fn redirect_uri(&self) -> &Url { &self.u }
  pub async fn wait(self, _s: &str, _t: Duration) -> Result<PendingCallback, CallbackError> { todo!() }
}
impl PendingCallback { pub fn finish(self, _f: Finish) {} }
