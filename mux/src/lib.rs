//! The box's front door on TCP :443.
//!
//! Every connection to the port is handled in three steps:
//!
//! 1. **Peek.** [`peek::HelloPeek`] reads the TLS ClientHello (sans-IO, fed by
//!    the shell in [`server`]) under one total deadline, and keeps every byte.
//! 2. **Route.** [`route::RouteTable`] picks the first route whose server
//!    names and ALPN ids match. Nothing matching means the default route,
//!    which terminates.
//! 3. **Serve.** A `passthrough` route replays the bytes to a TCP upstream,
//!    optionally behind a PROXY v2 header. A `terminate` route hands the bytes
//!    to rustls (one [`tls::server_config`] for every name, certificates from
//!    [`certs::CertStore`]); after the handshake, [`service::Dispatch`]
//!    sends the stream to TURN when it starts with STUN framing and to HTTPS
//!    otherwise.
//!
//! The crate knows nothing of the services behind it: the binary registers
//! them as [`service::Service`] implementations.

pub mod acme;
pub mod certs;
pub mod config;
mod error;
pub mod metrics;
pub mod peek;
pub mod proxy;
pub mod reload;
pub mod route;
pub mod server;
pub mod service;
pub mod stream;
pub mod tls;

pub use error::Error;
