pub mod awserver;
pub mod bin;
pub mod daemon;
pub mod devserver;
pub mod oidc;
pub mod rig;
