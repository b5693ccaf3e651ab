pub mod awserver;
