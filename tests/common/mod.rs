pub mod awserver;
pub mod bin;
pub mod daemon;
pub mod devserver;
pub mod exact;
pub mod oidc;
pub mod procfs;
pub mod rig;
