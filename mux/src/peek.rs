//! Sans-IO reader of a TLS ClientHello, for routing before any TLS state exists.
//!
//! Placeholder: the parser lands next to its fixtures and fuzz target.

/// Largest ClientHello handshake message accepted, its 4-byte header included.
pub const MAX_HELLO_LEN: usize = 16 * 1024;

/// Largest number of raw bytes (TLS records with their headers) buffered while peeking.
pub const MAX_PEEK_LEN: usize = MAX_HELLO_LEN + 2048;

/// Longest ALPN protocol id kept for routing; longer ids are skipped.
pub const MAX_ALPN_ID_LEN: usize = 32;

/// How many ALPN protocol ids are kept for routing; further ids are skipped.
pub const MAX_ALPN_IDS: usize = 8;

/// What routing needs to know about a ClientHello.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientHello {
    /// `server_name` (RFC 6066 §3) host name, lowercased, trailing dot removed.
    pub server_name: Option<heapless::String<253>>,
    /// ALPN protocol ids (RFC 7301) in the client's order.
    pub alpn: heapless::Vec<heapless::Vec<u8, MAX_ALPN_ID_LEN>, MAX_ALPN_IDS>,
    /// Length of the handshake message, header included.
    pub hello_len: usize,
    /// Number of TLS records the hello was spread over.
    pub records: usize,
    /// The hello carries an `encrypted_client_hello` extension (ECH outer hello).
    pub ech: bool,
    /// The hello offers a key share for the X25519MLKEM768 hybrid group.
    pub pq_key_share: bool,
}

/// Why a byte stream is not a ClientHello the mux accepts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PeekError {
    /// The first record is not a TLS handshake record.
    #[error("not a tls handshake")]
    NotTls,
    /// The first handshake message is not a ClientHello.
    #[error("first handshake message is not a clienthello")]
    NotClientHello,
    /// The ClientHello is longer than [`MAX_HELLO_LEN`].
    #[error("clienthello too large")]
    TooLarge,
    /// The ClientHello is spread over so many records that their headers exceed [`MAX_PEEK_LEN`].
    #[error("clienthello too fragmented")]
    TooFragmented,
    /// A length field is inconsistent or a field is out of range.
    #[error("malformed clienthello: {0}")]
    Malformed(&'static str),
}

/// Incremental ClientHello reader. Feed bytes with [`HelloPeek::handle_bytes`]
/// until it returns a hello or an error; [`HelloPeek::buffered`] then holds
/// every byte read, to replay to a TLS acceptor or a passthrough upstream.
#[derive(Debug)]
pub struct HelloPeek {
    buf: heapless::Vec<u8, MAX_PEEK_LEN>,
}

impl Default for HelloPeek {
    fn default() -> Self {
        Self::new()
    }
}

impl HelloPeek {
    /// A reader that has seen no bytes yet.
    pub fn new() -> Self {
        Self {
            buf: heapless::Vec::new(),
        }
    }

    /// Feeds bytes read from the connection.
    ///
    /// Returns `Ok(None)` while more bytes are needed, `Ok(Some(hello))` once
    /// the whole ClientHello has been read. Bytes past the end of the hello's
    /// last record are kept in [`HelloPeek::buffered`] too.
    pub fn handle_bytes(&mut self, data: &[u8]) -> Result<Option<&ClientHello>, PeekError> {
        let _ = data;
        Err(PeekError::NotTls)
    }

    /// Every byte fed so far, in order.
    pub fn buffered(&self) -> &[u8] {
        &self.buf
    }
}
