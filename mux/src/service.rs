//! The interface between the mux and the in-process services behind it.
//!
//! The binary registers a [`Service`] per [`ServiceName`]; the mux hands each
//! one the terminated streams routed to it. A service never learns how the
//! connection reached it, so the TURN relay and the HTTPS server can be built
//! and tested without the mux.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};

pub use crate::config::ServiceName;

/// A byte stream a service reads and writes: TLS already removed.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Stream for T {}

/// A boxed [`Stream`].
pub type BoxStream = Box<dyn Stream>;

/// The future a service returns for one connection.
pub type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// What the mux knows about a terminated connection.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The client's address.
    pub peer: SocketAddr,
    /// The local address the client connected to.
    pub local: SocketAddr,
    /// The server name the client asked for, normalised.
    pub server_name: Option<String>,
    /// The ALPN id negotiated in the handshake.
    pub alpn: Option<Vec<u8>>,
    /// The route that sent it here.
    pub route: Arc<str>,
}

/// An in-process service behind the mux.
pub trait Service: Send + Sync + 'static {
    /// Serves one connection until it ends. Errors are the service's to log.
    fn serve(&self, stream: BoxStream, info: ConnInfo) -> BoxFuture;
}

/// The registered services, by name.
#[derive(Clone, Default)]
pub struct Services {
    https: Option<Arc<dyn Service>>,
    turn: Option<Arc<dyn Service>>,
}

impl fmt::Debug for Services {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Services")
            .field("https", &self.https.is_some())
            .field("turn", &self.turn.is_some())
            .finish()
    }
}

impl Services {
    /// No services: every terminated connection is closed after its handshake.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `service` under `name`, replacing any earlier one.
    pub fn register(&mut self, name: ServiceName, service: Arc<dyn Service>) {
        match name {
            ServiceName::Https => self.https = Some(service),
            ServiceName::Turn => self.turn = Some(service),
        }
    }

    /// The service registered under `name`.
    pub fn get(&self, name: ServiceName) -> Option<&Arc<dyn Service>> {
        match name {
            ServiceName::Https => self.https.as_ref(),
            ServiceName::Turn => self.turn.as_ref(),
        }
    }
}

/// STUN magic cookie (RFC 8489 §6).
const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];

/// Bytes needed to tell STUN from anything else.
pub const SNIFF_LEN: usize = 8;

/// Result of looking at the first bytes of a terminated stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sniffed {
    /// More bytes are needed to decide.
    NeedMore,
    /// A STUN message: goes to the TURN relay.
    Stun,
    /// Anything else: goes to HTTPS, which answers or rejects it.
    Other,
}

/// Decides where a terminated stream without ALPN goes, from its first bytes.
///
/// A TURN client over TCP or TLS starts with a STUN request (an Allocate, or a
/// Binding): the top two bits are zero (RFC 8489 §6) and bytes 4..8 are the
/// magic cookie. ChannelData (first byte 0x40..0x4f) is not accepted as a
/// first message: it needs a channel bound earlier on the same connection,
/// and its first byte is also the first letter of `GET`, `HEAD` and `OPTIONS`.
pub fn sniff(prefix: &[u8]) -> Sniffed {
    match prefix.first() {
        None => Sniffed::NeedMore,
        Some(b) if b & 0xc0 != 0 => Sniffed::Other,
        Some(_) => match prefix.get(4..SNIFF_LEN) {
            None => Sniffed::NeedMore,
            Some(cookie) if cookie == MAGIC_COOKIE => Sniffed::Stun,
            Some(_) => Sniffed::Other,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffing() {
        // RFC 5769 §2.1 sample request header.
        let stun = [0x00, 0x01, 0x00, 0x58, 0x21, 0x12, 0xa4, 0x42, 0xb7];
        assert_eq!(sniff(&stun), Sniffed::Stun);
        assert_eq!(sniff(&stun[..4]), Sniffed::NeedMore);
        assert_eq!(sniff(b""), Sniffed::NeedMore);
        assert_eq!(sniff(b"GET / HTTP/1.1\r\n"), Sniffed::Other);
        assert_eq!(sniff(b"PRI * HTTP/2.0"), Sniffed::Other);
        assert_eq!(sniff(&[0x00, 0x01, 0x00, 0x00, 1, 2, 3, 4]), Sniffed::Other);
    }
}
