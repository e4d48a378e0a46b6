//! Sans-IO reader of a TLS ClientHello, for routing before any TLS state exists.
//!
//! The mux picks a route (terminate with rustls, or pass the bytes through) from
//! the client's first flight. [`HelloPeek`] takes those bytes in chunks of any
//! size, reassembles the ClientHello across TCP segments and TLS records, and
//! extracts what routing needs: server name, ALPN ids, whether the hello is an
//! ECH outer hello and whether it offers a post-quantum key share.
//!
//! It does no I/O, reads no clock and never allocates. Raw bytes go to one
//! fixed buffer of [`MAX_PEEK_LEN`] bytes, which is also what the shell replays
//! to the TLS acceptor or the passthrough upstream; the hello is parsed in
//! place, stepping over record headers, so no second copy of the message is
//! made. Whatever a peer sends, the reader answers with a [`PeekError`] and never
//! panics.
//!
//! # Run loop
//!
//! 1. Read from the socket (at most [`HelloPeek::wanted`] bytes to never read
//!    past the hello, or any amount), and pass the bytes to
//!    [`HelloPeek::handle_bytes`].
//! 2. On `Ok(None)` go back to 1; on `Ok(Some(hello))` route by it; on `Err`
//!    close (or hand the bytes to the TLS stack to answer with its own alert).
//! 3. Replay [`HelloPeek::buffered`] to whoever takes the connection.
//!
//! # Assumptions
//!
//! - The client's first bytes are a TLS 1.0 to 1.3 record carrying a
//!   ClientHello (RFC 8446 §4). SSLv2-compatible hellos (first byte 0x80) are
//!   [`PeekError::NotTls`].
//! - Only the first ClientHello is read. A second one, after a
//!   HelloRetryRequest, belongs to the TLS stack.
//!
//! # Limitations
//!
//! - A server name that is not a DNS host name (an IP literal, non-ASCII
//!   bytes, an empty label) is reported as no server name rather than as an
//!   error, because the terminating TLS stack treats it the same way and such
//!   a connection must get the same handshake as one without SNI.
//! - GREASE ALPN ids (RFC 8701 §2) and ids longer than [`MAX_ALPN_ID_LEN`]
//!   are left out of [`ClientHello::alpn`]; ids past [`MAX_ALPN_IDS`] too.
//! - A handshake record that carries bytes after the ClientHello is not
//!   rejected here; the bytes stay in [`HelloPeek::buffered`] for the TLS stack
//!   to judge.

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
    /// The ClientHello is spread over so many records that their headers exceed [`MAX_PEEK_LEN`],
    /// or bytes fed along with it do not fit in the buffer either.
    #[error("clienthello too fragmented")]
    TooFragmented,
    /// A length field is inconsistent or a field is out of range.
    #[error("malformed clienthello: {0}")]
    Malformed(&'static str),
}

/// Incremental ClientHello reader. Feed bytes with [`HelloPeek::handle_bytes`]
/// until it returns a hello or an error; [`HelloPeek::buffered`] then holds
/// every byte read, to replay to a TLS acceptor or a passthrough upstream.
///
/// The outcome is final: once a hello or an error has been returned, every
/// further call returns it again and ignores the bytes it is given, which then
/// belong to the caller.
#[derive(Debug)]
pub struct HelloPeek {
    buf: heapless::Vec<u8, MAX_PEEK_LEN>,
    framing: Framing,
    status: Status,
    hello: ClientHello,
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
            framing: Framing::default(),
            status: Status::Reading,
            hello: ClientHello::default(),
        }
    }

    /// Feeds bytes read from the connection.
    ///
    /// Returns `Ok(None)` while more bytes are needed, `Ok(Some(hello))` once
    /// the whole ClientHello has been read. Bytes past the end of the hello
    /// that come in the same call are kept in [`HelloPeek::buffered`] too; if
    /// they do not fit, the result is [`PeekError::TooFragmented`] rather than
    /// a replay with bytes missing.
    pub fn handle_bytes(&mut self, data: &[u8]) -> Result<Option<&ClientHello>, PeekError> {
        if self.status == Status::Reading {
            self.status = match self.read(data) {
                Ok(true) => Status::Done,
                Ok(false) => Status::Reading,
                Err(err) => Status::Failed(err),
            };
        }
        match &self.status {
            Status::Reading => Ok(None),
            Status::Done => Ok(Some(&self.hello)),
            Status::Failed(err) => Err(err.clone()),
        }
    }

    /// Every byte fed so far, in order, up to and including the call that
    /// returned the hello or the error; after [`PeekError::TooFragmented`],
    /// the bytes that fitted.
    pub fn buffered(&self) -> &[u8] {
        &self.buf
    }

    /// How many bytes the reader can take next without any of them lying past
    /// the ClientHello; 0 once the outcome is known. A shell that never reads
    /// more than this leaves everything after the hello in the socket.
    pub fn wanted(&self) -> usize {
        match self.status {
            Status::Reading => self.framing.wanted(self.buf.len()),
            Status::Done | Status::Failed(_) => 0,
        }
    }

    /// Buffers `data`, follows the record layer, and parses the hello once
    /// all of it is in. Returns whether the hello is complete.
    fn read(&mut self, data: &[u8]) -> Result<bool, PeekError> {
        let room = MAX_PEEK_LEN.saturating_sub(self.buf.len());
        let (fits, spills) = data.split_at_checked(room).unwrap_or((data, &[]));
        self.buf
            .extend_from_slice(fits)
            .map_err(|_| PeekError::TooFragmented)?;
        let complete = self.framing.advance(&self.buf)?;

        // Bytes that found no room would be missing from the replay, so they end
        // the peek even when the hello itself is complete.
        if !spills.is_empty() || (!complete && self.buf.is_full()) {
            return Err(PeekError::TooFragmented);
        }
        if let (true, Some(hello_len)) = (complete, self.framing.hello_len) {
            self.hello = parse_hello(&self.buf, hello_len, self.framing.records)?;
        }
        Ok(complete)
    }
}

/// Where a [`HelloPeek`] stands.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Status {
    Reading,
    Done,
    Failed(PeekError),
}

/// TLS record content type of handshake messages (RFC 8446 §5.1).
const CONTENT_HANDSHAKE: u8 = 22;
/// Handshake message type of a ClientHello (RFC 8446 §4).
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
const RECORD_HEADER_LEN: usize = 5;
const HANDSHAKE_HEADER_LEN: usize = 4;
/// A plaintext record carries at most 2^14 bytes (RFC 8446 §5.1); the 256
/// bytes of slack of the ciphertext bound (§5.2) are tolerated so that a
/// lenient client is judged by the TLS stack rather than by the peek.
const MAX_RECORD_LEN: usize = (1 << 14) + 256;

/// Progress through the record layer, in bytes of the peek buffer.
#[derive(Debug, Default)]
struct Framing {
    /// Bytes of the buffer already looked at; only a partial record header
    /// is ever left after them.
    scanned: usize,
    /// Payload bytes of the current record not looked at yet; 0 between records.
    record_left: usize,
    /// Records whose header has been read.
    records: usize,
    /// Handshake message bytes seen so far, across records.
    handshake_seen: usize,
    /// The handshake header, filled as its bytes arrive.
    handshake_header: [u8; HANDSHAKE_HEADER_LEN],
    /// The hello's length, header included, once its header is in.
    hello_len: Option<usize>,
}

impl Framing {
    /// Looks at the bytes of `raw` not seen yet. Returns whether the hello is complete.
    fn advance(&mut self, raw: &[u8]) -> Result<bool, PeekError> {
        loop {
            if self.hello_len.is_some_and(|len| self.handshake_seen >= len) {
                return Ok(true);
            }
            let rest = raw.get(self.scanned..).unwrap_or_default();
            if rest.is_empty() {
                return Ok(false);
            }
            if self.record_left > 0 {
                self.read_payload(rest)?;
            } else if !self.read_record_header(rest)? {
                return Ok(false);
            }
        }
    }

    /// Reads the header of the next record, if all of it is in.
    fn read_record_header(&mut self, rest: &[u8]) -> Result<bool, PeekError> {
        let first = self.records == 0;
        check_record_prefix(rest, first)?;
        let Some(&[_, _, _, len_hi, len_lo]) = rest.get(..RECORD_HEADER_LEN) else {
            return Ok(false);
        };
        let len = usize::from(u16::from_be_bytes([len_hi, len_lo]));

        // RFC 8446 §5.1: handshake records are never empty.
        if len == 0 {
            return Err(PeekError::Malformed("empty handshake record"));
        }
        if len > MAX_RECORD_LEN {
            return Err(PeekError::Malformed("record longer than the tls limit"));
        }
        self.scanned += RECORD_HEADER_LEN;
        self.record_left = len;
        self.records += 1;
        Ok(true)
    }

    /// Takes the payload bytes of the current record that are in, stopping
    /// at the end of the handshake header (to check it) or of the hello.
    fn read_payload(&mut self, rest: &[u8]) -> Result<(), PeekError> {
        let until = self.hello_len.unwrap_or(HANDSHAKE_HEADER_LEN);
        let take = until
            .saturating_sub(self.handshake_seen)
            .min(self.record_left)
            .min(rest.len());
        if self.hello_len.is_none() {
            for &byte in rest.iter().take(take) {
                self.read_header_byte(byte)?;
            }
        } else {
            self.handshake_seen += take;
        }
        self.scanned += take;
        self.record_left -= take;
        Ok(())
    }

    /// Records one byte of the handshake header, checking it as soon as it can be.
    fn read_header_byte(&mut self, byte: u8) -> Result<(), PeekError> {
        if let Some(slot) = self.handshake_header.get_mut(self.handshake_seen) {
            *slot = byte;
        }
        self.handshake_seen += 1;

        // RFC 8446 §4: a client opens with a ClientHello.
        if self.handshake_seen == 1 && byte != HANDSHAKE_CLIENT_HELLO {
            return Err(PeekError::NotClientHello);
        }
        if self.handshake_seen == HANDSHAKE_HEADER_LEN {
            let [_, a, b, c] = self.handshake_header;
            let body = (usize::from(a) << 16) | (usize::from(b) << 8) | usize::from(c);
            let hello_len = body + HANDSHAKE_HEADER_LEN;
            if hello_len > MAX_HELLO_LEN {
                return Err(PeekError::TooLarge);
            }
            self.hello_len = Some(hello_len);
        }
        Ok(())
    }

    /// See [`HelloPeek::wanted`]; `buffered` is the length of the peek buffer.
    fn wanted(&self, buffered: usize) -> usize {
        if self.record_left == 0 {
            let partial_header = buffered.saturating_sub(self.scanned);
            return RECORD_HEADER_LEN.saturating_sub(partial_header);
        }
        let until = self.hello_len.unwrap_or(HANDSHAKE_HEADER_LEN);
        until
            .saturating_sub(self.handshake_seen)
            .min(self.record_left)
    }
}

/// Checks the part of a record header that has arrived, so that a stream
/// that is not TLS is turned away on its first byte.
fn check_record_prefix(prefix: &[u8], first: bool) -> Result<(), PeekError> {
    let reject = |why| {
        if first {
            PeekError::NotTls
        } else {
            PeekError::Malformed(why)
        }
    };
    // RFC 8446 §5.1: the hello travels in handshake records only.
    if prefix
        .first()
        .is_some_and(|&kind| kind != CONTENT_HANDSHAKE)
    {
        return Err(reject("record of another type inside the clienthello"));
    }
    // RFC 8446 §5.1 and appendix D: legacy_record_version is 0x0301 in
    // practice; SSL 3.0 to TLS 1.3 numbers are accepted.
    if prefix.get(1).is_some_and(|&major| major != 3) {
        return Err(reject("record version is not tls"));
    }
    if prefix.get(2).is_some_and(|&minor| minor > 4) {
        return Err(reject("record version is not tls"));
    }
    Ok(())
}

/// Extension types and groups, with the documents that define them.
const EXT_SERVER_NAME: u16 = 0; // RFC 6066 §3
const EXT_ALPN: u16 = 16; // RFC 7301 §3.1
const EXT_KEY_SHARE: u16 = 51; // RFC 8446 §4.2.8
const EXT_ENCRYPTED_CLIENT_HELLO: u16 = 0xfe0d; // draft-ietf-tls-esni §5
const GROUP_X25519MLKEM768: u16 = 0x11ec; // draft-ietf-tls-ecdhe-mlkem
/// `NameType` of a DNS host name in the server_name extension (RFC 6066 §3).
const NAME_TYPE_HOST_NAME: u8 = 0;
/// Longest host name as text, without the root dot (RFC 1035 §2.3.4 allows
/// 255 octets on the wire, which is 253 characters).
const MAX_HOST_NAME_LEN: usize = 253;
/// Longest DNS label (RFC 1035 §2.3.4).
const MAX_LABEL_LEN: usize = 63;

const TRUNCATED: PeekError = PeekError::Malformed("field runs past its enclosing length");

/// Parses the hello, `hello_len` bytes of handshake message spread over the records in `raw`.
fn parse_hello(raw: &[u8], hello_len: usize, records: usize) -> Result<ClientHello, PeekError> {
    let mut message = Cursor::new(raw, hello_len);
    // The handshake header was checked while framing.
    message.skip(HANDSHAKE_HEADER_LEN)?;
    let mut hello = ClientHello {
        hello_len,
        records,
        ..ClientHello::default()
    };
    parse_body(message, &mut hello)?;
    Ok(hello)
}

/// Walks the fixed fields of the ClientHello body (RFC 8446 §4.1.2), then its extensions.
fn parse_body(mut body: Cursor<'_>, hello: &mut ClientHello) -> Result<(), PeekError> {
    let [major, _] = body.u16()?.to_be_bytes();
    if major != 3 {
        return Err(PeekError::Malformed("clienthello version is not tls"));
    }
    body.skip(32)?; // random

    // RFC 8446 §4.1.2: legacy_session_id<0..32>.
    let session_id = body.u8()?;
    if session_id > 32 {
        return Err(PeekError::Malformed("session id longer than 32 bytes"));
    }
    body.skip(usize::from(session_id))?;

    // RFC 8446 §4.1.2: cipher_suites<2..2^16-2>, two bytes each.
    let suites = usize::from(body.u16()?);
    if suites == 0 || suites % 2 != 0 {
        return Err(PeekError::Malformed("cipher suite list"));
    }
    body.skip(suites)?;

    // RFC 8446 §4.1.2: legacy_compression_methods<1..2^8-1>.
    let compression = body.u8()?;
    if compression == 0 {
        return Err(PeekError::Malformed("empty compression method list"));
    }
    body.skip(usize::from(compression))?;

    // RFC 5246 §7.4.1.2: a hello without extensions simply ends here.
    if body.is_empty() {
        return Ok(());
    }
    let extensions = body.take_u16_prefixed()?;
    body.finish("bytes after the extensions")?;
    parse_extensions(extensions, hello)
}

/// Reads every extension, keeping what routing needs.
fn parse_extensions(mut list: Cursor<'_>, hello: &mut ClientHello) -> Result<(), PeekError> {
    let mut kinds = heapless::Vec::<u16, MAX_EXTENSIONS>::new();
    while !list.is_empty() {
        let kind = list.u16()?;
        let data = list.take_u16_prefixed()?;
        kinds
            .push(kind)
            .map_err(|_| PeekError::Malformed("more extensions than fit in a hello"))?;
        match kind {
            EXT_SERVER_NAME => hello.server_name = parse_server_name(data)?,
            EXT_ALPN => parse_alpn(data, &mut hello.alpn)?,
            EXT_KEY_SHARE => hello.pq_key_share = parse_key_share(data)?,
            EXT_ENCRYPTED_CLIENT_HELLO => hello.ech = true,
            // Anything else, GREASE types (RFC 8701 §2) included, is the TLS stack's business.
            _ => {}
        }
    }
    // RFC 8446 §4.2: no two extensions of the same type. Sorting finds
    // repeats in n log n however many extensions a hostile hello carries,
    // and the list is never zeroed, so a usual hello touches a few dozen
    // bytes of it.
    kinds.sort_unstable();
    if kinds.windows(2).any(|pair| pair[0] == pair[1]) {
        return Err(PeekError::Malformed("duplicate extension"));
    }
    Ok(())
}

/// The most extensions a hello can carry: each takes at least four bytes.
const MAX_EXTENSIONS: usize = MAX_HELLO_LEN / 4;

/// Reads `server_name` (RFC 6066 §3): the host name, or `None` if the client
/// sent none or one that is not a DNS host name.
fn parse_server_name(mut data: Cursor<'_>) -> Result<Option<heapless::String<253>>, PeekError> {
    let mut list = data.take_u16_prefixed()?;
    data.finish("bytes after the server name list")?;
    if list.is_empty() {
        return Err(PeekError::Malformed("empty server name list"));
    }
    let mut name = None;
    let mut seen_host_name = false;
    while !list.is_empty() {
        // RFC 6066 §3 defines no length rule for other name types, so
        // nothing after one can be read.
        if list.u8()? != NAME_TYPE_HOST_NAME {
            break;
        }
        // RFC 6066 §3: no more than one name of the same name_type.
        if seen_host_name {
            return Err(PeekError::Malformed("two host names"));
        }
        seen_host_name = true;
        name = parse_host_name(list.take_u16_prefixed()?)?;
    }
    Ok(name)
}

/// Lowercases `name`, drops one trailing dot and checks its length; returns
/// `None` for names that are not DNS host names, such as the IP literals some
/// clients send although RFC 6066 §3 forbids them.
fn parse_host_name(name: Cursor<'_>) -> Result<Option<heapless::String<253>>, PeekError> {
    // RFC 6066 §3: HostName<1..2^16-1>; one trailing dot may come on top of the 253.
    let mut bytes = heapless::Vec::<u8, { MAX_HOST_NAME_LEN + 1 }>::new();
    name.copy_into(&mut bytes)
        .map_err(|_| PeekError::Malformed("host name longer than 253 bytes"))?;
    if bytes.last() == Some(&b'.') {
        bytes.pop();
    }
    if bytes.is_empty() {
        return Err(PeekError::Malformed("empty host name"));
    }
    if bytes.len() > MAX_HOST_NAME_LEN {
        return Err(PeekError::Malformed("host name longer than 253 bytes"));
    }
    bytes.make_ascii_lowercase();
    if !is_host_name(&bytes) {
        return Ok(None);
    }
    let mut text = heapless::String::new();
    for &byte in bytes.iter() {
        text.push(char::from(byte))
            .map_err(|_| PeekError::Malformed("host name longer than 253 bytes"))?;
    }
    Ok(Some(text))
}

/// Whether a lowercased name without trailing dot is a DNS host name: labels
/// of letters, digits and hyphens (RFC 1123 §2.1), underscores tolerated as
/// TLS stacks do, and a last label that is not all digits, which rules out
/// IPv4 literals (RFC 3696 §2). IPv6 literals fail on their colons.
fn is_host_name(name: &[u8]) -> bool {
    let labels_ok = name.split(|&byte| byte == b'.').all(is_label);
    let numeric_tld = name
        .rsplit(|&byte| byte == b'.')
        .next()
        .is_some_and(|tld| tld.iter().all(u8::is_ascii_digit));
    labels_ok && !numeric_tld
}

/// Whether `label` is one to 63 letters, digits, hyphens or underscores, with
/// no hyphen at either end (RFC 1123 §2.1).
fn is_label(label: &[u8]) -> bool {
    let allowed = |byte: &u8| {
        byte.is_ascii_lowercase() || byte.is_ascii_digit() || *byte == b'-' || *byte == b'_'
    };
    (1..=MAX_LABEL_LEN).contains(&label.len())
        && !label.starts_with(b"-")
        && !label.ends_with(b"-")
        && label.iter().all(allowed)
}

/// Alias for the ALPN ids kept in a [`ClientHello`].
type AlpnIds = heapless::Vec<heapless::Vec<u8, MAX_ALPN_ID_LEN>, MAX_ALPN_IDS>;

/// Reads `application_layer_protocol_negotiation` (RFC 7301 §3.1) into `ids`.
fn parse_alpn(mut data: Cursor<'_>, ids: &mut AlpnIds) -> Result<(), PeekError> {
    // RFC 7301 §3.1: protocol_name_list<2..2^16-1>.
    let mut list = data.take_u16_prefixed()?;
    data.finish("bytes after the alpn list")?;
    if list.is_empty() {
        return Err(PeekError::Malformed("empty alpn list"));
    }
    while !list.is_empty() {
        let len = list.u8()?;
        // RFC 7301 §3.1: ProtocolName<1..2^8-1>.
        if len == 0 {
            return Err(PeekError::Malformed("empty alpn id"));
        }
        let id = list.take(usize::from(len))?;
        let mut kept = heapless::Vec::new();
        // Too long to route by: skipped, as are ids past the first few.
        if ids.is_full() || id.copy_into(&mut kept).is_err() || is_grease_alpn(&kept) {
            continue;
        }
        ids.push(kept)
            .map_err(|_| PeekError::Malformed("too many alpn ids"))?;
    }
    Ok(())
}

/// GREASE ALPN ids are two equal bytes of the form 0x?A (RFC 8701 §2).
fn is_grease_alpn(id: &[u8]) -> bool {
    matches!(id, &[a, b] if a == b && a & 0x0f == 0x0a)
}

/// Reads `key_share` (RFC 8446 §4.2.8); returns whether one of the shares is
/// for X25519MLKEM768.
fn parse_key_share(mut data: Cursor<'_>) -> Result<bool, PeekError> {
    // RFC 8446 §4.2.8: client_shares<0..2^16-1>.
    let mut shares = data.take_u16_prefixed()?;
    data.finish("bytes after the key shares")?;
    let mut post_quantum = false;
    while !shares.is_empty() {
        let group = shares.u16()?;
        let key_exchange = shares.take_u16_prefixed()?;
        // RFC 8446 §4.2.8: key_exchange<1..2^16-1>.
        if key_exchange.is_empty() {
            return Err(PeekError::Malformed("empty key share"));
        }
        post_quantum |= group == GROUP_X25519MLKEM768;
    }
    Ok(post_quantum)
}

/// A window of `left` bytes of the handshake message, read straight out of
/// the buffered records by stepping over their headers, so the message never
/// needs a contiguous copy. Record headers were validated while framing.
#[derive(Debug, Clone, Copy)]
struct Cursor<'a> {
    raw: &'a [u8],
    /// Next byte of `raw` to read: a record header when `record_left` is 0.
    pos: usize,
    /// Payload bytes left in the current record.
    record_left: usize,
    /// Bytes left in this window.
    left: usize,
}

impl<'a> Cursor<'a> {
    /// A window on the first `len` bytes of the handshake payload of `raw`.
    fn new(raw: &'a [u8], len: usize) -> Self {
        Self {
            raw,
            pos: 0,
            record_left: 0,
            left: len,
        }
    }

    fn is_empty(&self) -> bool {
        self.left == 0
    }

    /// Fails with `why` unless the window has been read to its end.
    fn finish(&self, why: &'static str) -> Result<(), PeekError> {
        if self.is_empty() {
            Ok(())
        } else {
            Err(PeekError::Malformed(why))
        }
    }

    /// The next one to `max` bytes that lie in one record; never empty when `max > 0`.
    fn chunk(&mut self, max: usize) -> Result<&'a [u8], PeekError> {
        if self.left == 0 {
            return Err(TRUNCATED);
        }
        if self.record_left == 0 {
            self.enter_record()?;
        }
        let len = max.min(self.left).min(self.record_left);
        let bytes = self.raw.get(self.pos..self.pos + len).ok_or(TRUNCATED)?;
        self.pos += len;
        self.left -= len;
        self.record_left -= len;
        Ok(bytes)
    }

    /// Steps over the header of the record the cursor stands at.
    fn enter_record(&mut self) -> Result<(), PeekError> {
        let header = self.raw.get(self.pos..self.pos + RECORD_HEADER_LEN);
        let Some(&[_, _, _, len_hi, len_lo]) = header else {
            return Err(TRUNCATED);
        };
        // Framing rejects empty records; checked again so `chunk` always progresses.
        self.record_left = usize::from(u16::from_be_bytes([len_hi, len_lo]));
        if self.record_left == 0 {
            return Err(PeekError::Malformed("empty handshake record"));
        }
        self.pos += RECORD_HEADER_LEN;
        Ok(())
    }

    fn u8(&mut self) -> Result<u8, PeekError> {
        self.chunk(1)?.first().copied().ok_or(TRUNCATED)
    }

    fn u16(&mut self) -> Result<u16, PeekError> {
        Ok(u16::from_be_bytes([self.u8()?, self.u8()?]))
    }

    fn skip(&mut self, mut len: usize) -> Result<(), PeekError> {
        while len > 0 {
            len -= self.chunk(len)?.len();
        }
        Ok(())
    }

    /// Splits off the next `len` bytes as a window of their own.
    fn take(&mut self, len: usize) -> Result<Cursor<'a>, PeekError> {
        if len > self.left {
            return Err(TRUNCATED);
        }
        let window = Cursor { left: len, ..*self };
        self.skip(len)?;
        Ok(window)
    }

    /// Splits off a window whose length is given by the next two bytes.
    fn take_u16_prefixed(&mut self) -> Result<Cursor<'a>, PeekError> {
        let len = self.u16()?;
        self.take(usize::from(len))
    }

    /// Copies the whole window into `out`; fails if it does not fit.
    fn copy_into<const N: usize>(
        mut self,
        out: &mut heapless::Vec<u8, N>,
    ) -> Result<(), PeekError> {
        if self.left > N.saturating_sub(out.len()) {
            return Err(PeekError::Malformed("field longer than its limit"));
        }
        while !self.is_empty() {
            let bytes = self.chunk(self.left)?;
            out.extend_from_slice(bytes)
                .map_err(|_| PeekError::Malformed("field longer than its limit"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds ClientHello handshake messages field by field.
    #[derive(Default)]
    struct HelloBuilder {
        extensions: Vec<(u16, Vec<u8>)>,
    }

    impl HelloBuilder {
        fn ext(mut self, kind: u16, data: Vec<u8>) -> Self {
            self.extensions.push((kind, data));
            self
        }

        fn sni(self, name: &[u8]) -> Self {
            let mut entry = vec![NAME_TYPE_HOST_NAME];
            entry.extend(u16_prefixed(name));
            self.ext(EXT_SERVER_NAME, u16_prefixed(&entry))
        }

        fn alpn(self, ids: &[&[u8]]) -> Self {
            let mut list = Vec::new();
            for id in ids {
                list.push(u8::try_from(id.len()).expect("test ids are short"));
                list.extend_from_slice(id);
            }
            self.ext(EXT_ALPN, u16_prefixed(&list))
        }

        fn key_shares(self, groups: &[u16]) -> Self {
            let mut list = Vec::new();
            for group in groups {
                list.extend(group.to_be_bytes());
                list.extend(u16_prefixed(&[0x42; 32]));
            }
            self.ext(EXT_KEY_SHARE, u16_prefixed(&list))
        }

        /// The handshake message: header and body.
        fn message(&self) -> Vec<u8> {
            let mut body = vec![3, 3];
            body.extend([7; 32]);
            body.push(32);
            body.extend([9; 32]);
            body.extend(u16_prefixed(&[0x13, 0x01, 0x13, 0x02]));
            body.extend([1, 0]);
            let mut extensions = Vec::new();
            for (kind, data) in &self.extensions {
                extensions.extend(kind.to_be_bytes());
                extensions.extend(u16_prefixed(data));
            }
            body.extend(u16_prefixed(&extensions));
            handshake(&body)
        }

        /// The message in one record.
        fn record(&self) -> Vec<u8> {
            records(&self.message(), usize::MAX)
        }
    }

    fn u16_prefixed(data: &[u8]) -> Vec<u8> {
        let len = u16::try_from(data.len()).expect("test fields are short");
        let mut out = len.to_be_bytes().to_vec();
        out.extend_from_slice(data);
        out
    }

    fn handshake(body: &[u8]) -> Vec<u8> {
        let len = u32::try_from(body.len()).expect("test bodies are short");
        let mut out = vec![HANDSHAKE_CLIENT_HELLO];
        out.extend(&len.to_be_bytes()[1..]);
        out.extend_from_slice(body);
        out
    }

    /// Frames `message` into handshake records of at most `size` payload bytes.
    fn records(message: &[u8], size: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for part in message.chunks(size.min(1 << 14)) {
            out.extend([CONTENT_HANDSHAKE, 3, 1]);
            out.extend(u16_prefixed(part));
        }
        out
    }

    fn peek(bytes: &[u8]) -> Result<Option<ClientHello>, PeekError> {
        HelloPeek::new()
            .handle_bytes(bytes)
            .map(|hello| hello.cloned())
    }

    fn hello(bytes: &[u8]) -> ClientHello {
        peek(bytes)
            .expect("hello parses")
            .expect("hello is complete")
    }

    fn sni(bytes: &[u8]) -> Option<String> {
        hello(bytes)
            .server_name
            .map(|name| name.as_str().to_owned())
    }

    #[test]
    fn reads_server_name_alpn_and_lengths() {
        let builder = HelloBuilder::default()
            .sni(b"turn.example.org")
            .alpn(&[b"h2", b"http/1.1"]);
        let hello = hello(&builder.record());
        assert_eq!(hello.server_name.as_deref(), Some("turn.example.org"));
        let alpn: Vec<&[u8]> = hello.alpn.iter().map(|id| id.as_slice()).collect();
        assert_eq!(alpn, [b"h2".as_slice(), b"http/1.1"]);
        assert_eq!(hello.hello_len, builder.message().len());
        assert_eq!(hello.records, 1);
        assert!(!hello.ech && !hello.pq_key_share);
    }

    #[test]
    fn lowercases_server_name() {
        let record = HelloBuilder::default().sni(b"Mixed.Example.ORG").record();
        assert_eq!(sni(&record).as_deref(), Some("mixed.example.org"));
    }

    #[test]
    fn strips_one_trailing_dot() {
        let record = HelloBuilder::default().sni(b"example.org.").record();
        assert_eq!(sni(&record).as_deref(), Some("example.org"));
        let record = HelloBuilder::default().sni(b"example.org..").record();
        assert_eq!(sni(&record), None);
    }

    #[test]
    fn rejects_empty_and_long_server_names() {
        for name in [&b""[..], b".", &[b'a'; 254]] {
            let record = HelloBuilder::default().sni(name).record();
            assert!(matches!(peek(&record), Err(PeekError::Malformed(_))));
        }
        let mut longest = [b'a'; 254];
        for dot in longest.iter_mut().skip(50).step_by(50) {
            *dot = b'.';
        }
        let record = HelloBuilder::default().sni(&longest[..253]).record();
        assert_eq!(sni(&record).map(|name| name.len()), Some(253));
        longest[253] = b'.';
        let record = HelloBuilder::default().sni(&longest).record();
        assert_eq!(sni(&record).map(|name| name.len()), Some(253));
    }

    #[test]
    fn ignores_names_that_are_not_host_names() {
        for name in [
            &b"127.0.0.1"[..],
            b"::1",
            b"[::1]",
            b"a..b",
            b"-a.example",
            b"caf\xc3\xa9.example",
            b"a b",
        ] {
            let record = HelloBuilder::default().sni(name).record();
            assert_eq!(sni(&record), None, "{}", String::from_utf8_lossy(name));
        }
        let record = HelloBuilder::default().sni(b"_acme.1.example").record();
        assert_eq!(sni(&record).as_deref(), Some("_acme.1.example"));
    }

    #[test]
    fn tolerates_grease() {
        let record = HelloBuilder::default()
            .ext(0x0a0a, Vec::new())
            .sni(b"example.org")
            .alpn(&[b"\x3a\x3a", b"h2"])
            .key_shares(&[0x2a2a, GROUP_X25519MLKEM768, 0x001d])
            .ext(0xfafa, vec![0])
            .record();
        let hello = hello(&record);
        assert_eq!(hello.server_name.as_deref(), Some("example.org"));
        assert_eq!(hello.alpn.len(), 1);
        assert!(hello.pq_key_share);
    }

    #[test]
    fn flags_ech_and_post_quantum_share() {
        let record = HelloBuilder::default()
            .key_shares(&[0x001d])
            .ext(EXT_ENCRYPTED_CLIENT_HELLO, vec![0; 20])
            .record();
        let hello = hello(&record);
        assert!(hello.ech);
        assert!(!hello.pq_key_share);
    }

    #[test]
    fn rejects_duplicate_extensions() {
        let record = HelloBuilder::default()
            .alpn(&[b"h2"])
            .sni(b"example.org")
            .alpn(&[b"h2"])
            .record();
        assert_eq!(
            peek(&record),
            Err(PeekError::Malformed("duplicate extension"))
        );
        let record = HelloBuilder::default()
            .ext(0x1a1a, Vec::new())
            .ext(0x1a1a, Vec::new())
            .record();
        assert!(peek(&record).is_err());
    }

    #[test]
    fn a_hello_full_of_extensions_is_checked_for_repeats_to_the_last() {
        let many = |last: u16| {
            (0x2000..0x2000 + 3999)
                .chain([last])
                .fold(HelloBuilder::default(), |b, kind| b.ext(kind, Vec::new()))
                .record()
        };
        let distinct = many(0x2000 + 3999);
        assert!(distinct.len() > MAX_HELLO_LEN - 1024, "{}", distinct.len());
        assert!(hello(&distinct).server_name.is_none());
        assert_eq!(
            peek(&many(0x2000)),
            Err(PeekError::Malformed("duplicate extension"))
        );
    }

    #[test]
    fn skips_long_alpn_ids_and_keeps_a_few() {
        let long = [b'x'; MAX_ALPN_ID_LEN + 1];
        let many: Vec<&[u8]> = std::iter::once(&long[..])
            .chain(std::iter::repeat_n(&b"h2"[..], MAX_ALPN_IDS + 2))
            .collect();
        let hello = hello(&HelloBuilder::default().alpn(&many).record());
        assert_eq!(hello.alpn.len(), MAX_ALPN_IDS);
        assert!(hello.alpn.iter().all(|id| id.as_slice() == b"h2"));
    }

    #[test]
    fn rejects_empty_alpn_id() {
        let record = HelloBuilder::default().alpn(&[b"h2", b""]).record();
        assert_eq!(peek(&record), Err(PeekError::Malformed("empty alpn id")));
    }

    #[test]
    fn rejects_zero_length_record() {
        let mut bytes = vec![CONTENT_HANDSHAKE, 3, 1, 0, 0];
        bytes.extend(HelloBuilder::default().record());
        assert_eq!(
            peek(&bytes),
            Err(PeekError::Malformed("empty handshake record"))
        );
    }

    #[test]
    fn rejects_other_content_types() {
        assert_eq!(peek(&[21]), Err(PeekError::NotTls));
        assert_eq!(peek(b"GET / HTTP/1.1\r\n"), Err(PeekError::NotTls));
        assert_eq!(peek(&[22, 2]), Err(PeekError::NotTls));
        assert_eq!(peek(&[22, 3, 5]), Err(PeekError::NotTls));

        let message = HelloBuilder::default().message();
        let mut bytes = records(message.get(..10).expect("message is long"), 10);
        bytes.extend([23, 3, 3, 0, 1, 0]);
        assert_eq!(
            peek(&bytes),
            Err(PeekError::Malformed(
                "record of another type inside the clienthello"
            ))
        );
    }

    #[test]
    fn rejects_other_handshake_messages() {
        assert_eq!(peek(&[22, 3, 1, 0, 4, 2]), Err(PeekError::NotClientHello));
    }

    #[test]
    fn rejects_oversize_hello_from_its_header() {
        let too_long = MAX_HELLO_LEN - HANDSHAKE_HEADER_LEN + 1;
        let [_, a, b, c] = u32::try_from(too_long).expect("fits").to_be_bytes();
        assert_eq!(
            peek(&[22, 3, 1, 0x40, 0, 1, a, b, c]),
            Err(PeekError::TooLarge)
        );
        assert_eq!(
            peek(&[22, 3, 1, 0x41, 1]),
            Err(PeekError::Malformed("record longer than the tls limit"))
        );
    }

    #[test]
    fn rejects_bad_fixed_fields() {
        let good = HelloBuilder::default().message();
        // Offsets in the handshake message: version at 4, session id length at 38,
        // cipher suites length at 71, compression methods length at 77.
        for (offset, value) in [(4, 2), (38, 33), (72, 3), (72, 0), (77, 0)] {
            let mut message = good.clone();
            message[offset] = value;
            assert!(
                matches!(peek(&records(&message, 100)), Err(PeekError::Malformed(_))),
                "offset {offset}"
            );
        }
    }

    #[test]
    fn accepts_hello_without_extensions() {
        let mut body = vec![3, 1];
        body.extend([0; 32]);
        body.extend([0, 0, 2, 0, 0x2f, 1, 0]);
        let hello = hello(&records(&handshake(&body), 100));
        assert_eq!(hello.server_name, None);
        assert!(hello.alpn.is_empty());
    }

    #[test]
    fn keeps_trailing_bytes_and_stays_done() {
        let mut bytes = HelloBuilder::default().sni(b"a.example").record();
        let len = bytes.len();
        bytes.extend([20, 3, 3, 0, 1, 1]);
        let mut peek = HelloPeek::new();
        let first = peek.handle_bytes(&bytes).expect("parses").cloned();
        assert_eq!(peek.buffered(), bytes.as_slice());
        let again = peek.handle_bytes(b"more").expect("stays done").cloned();
        assert_eq!(first, again);
        assert_eq!(peek.buffered().len(), len + 6);
        assert_eq!(peek.wanted(), 0);
    }

    #[test]
    fn stays_failed() {
        let mut peek = HelloPeek::new();
        assert_eq!(peek.handle_bytes(b"G"), Err(PeekError::NotTls));
        let record = HelloBuilder::default().record();
        assert_eq!(peek.handle_bytes(&record), Err(PeekError::NotTls));
        assert_eq!(peek.buffered(), b"G");
    }

    #[test]
    fn reassembles_any_record_size_byte_by_byte() {
        let message = HelloBuilder::default()
            .sni(b"split.example")
            .alpn(&[b"h2"])
            .message();
        for size in [1, 2, 3, 5, 7, 64, 1000] {
            let bytes = records(&message, size);
            let mut peek = HelloPeek::new();
            let (last, head) = bytes.split_last().expect("not empty");
            for byte in head {
                assert_eq!(peek.handle_bytes(&[*byte]), Ok(None));
            }
            let hello = peek.handle_bytes(&[*last]).expect("parses").cloned();
            let hello = hello.expect("complete");
            assert_eq!(hello.server_name.as_deref(), Some("split.example"));
            assert_eq!(hello.records, message.len().div_ceil(size));
        }
    }

    #[test]
    fn wanted_never_reads_past_the_hello() {
        let message = HelloBuilder::default().sni(b"exact.example").message();
        let mut bytes = records(&message, 30);
        let hello_bytes = bytes.len();
        bytes.extend([20, 3, 3, 0, 1, 1]);
        let mut peek = HelloPeek::new();
        let mut offset = 0;
        while peek.wanted() > 0 {
            let next = bytes.get(offset..offset + peek.wanted()).expect("in range");
            offset += next.len();
            peek.handle_bytes(next).expect("parses");
        }
        assert_eq!(offset, hello_bytes);
        assert!(peek.handle_bytes(&[]).expect("parses").is_some());
    }

    #[test]
    fn rejects_too_many_record_headers() {
        let message = HelloBuilder::default().ext(21, vec![0; 4000]).message();
        assert_eq!(peek(&records(&message, 1)), Err(PeekError::TooFragmented));
    }
}
