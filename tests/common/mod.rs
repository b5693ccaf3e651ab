pub mod awserver;
pub mod bin;
pub mod devserver;
pub mod oidc;
pub mod rig;
