pub mod awserver;
pub mod bin;
pub mod devserver;
pub mod rig;
