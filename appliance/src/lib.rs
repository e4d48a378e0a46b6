//! The `edge` binary's library: configuration, wiring of the parts, and the
//! box's own services. `main.rs` is only the command line.

pub mod config;
mod durable;
pub mod https;
pub mod run;
pub mod status;
pub mod storage;
mod sys;
pub mod update;
pub mod watchdog;
