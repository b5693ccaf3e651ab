//! The dev server as an OpenID provider, driven by the `oauth2` crate as aw-sync-samay's login
//! drives a real provider: PKCE S256 code flow (auto-approved and through the sign-in form),
//! redirect URI rules, single-use codes, refresh rotation with reuse detection, expiry on the
//! injectable clock, revocation, and the batch endpoint accepting what the provider issued —
//! or what another provider issued, through `external_issuer`.

mod flow;
mod grants;
mod issuers;
mod support;
