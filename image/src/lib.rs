//! Slot layout, boot state and update bundle formats of the box image.
//!
//! Sans-IO throughout: nothing here opens a file, a socket or reads the
//! clock. The updater inside `edge` and the host tool `edge-bundle` do the
//! I/O and feed bytes in.
//!
//! - [`bootstate`]: the two-copy boot state on the `bootstate` partition
//!   (docs/image.md), decoding, encoding and the updater's transitions.
//! - [`env`]: U-Boot environment blocks, the byte format of one copy.
//! - [`bundle`]: the signed update bundle (docs/bundle.md), read and checked
//!   incrementally, and written by the host tool.
//! - [`keys`]: Ed25519 signing keys and their file formats.
//! - [`gpt`] and [`ext4`]: the partition table and the data file system's
//!   size, read to grow `data` to the end of the medium on first boot.

pub mod bootstate;
pub mod bundle;
pub mod env;
mod error;
pub mod ext4;
pub mod gpt;
mod hex;
pub mod keys;

pub use error::{BootStateError, BundleError, Error, GptError};
