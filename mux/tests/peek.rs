//! The ClientHello peek against hellos captured from real clients (see
//! `fixtures/hello/README.md`), cut and re-framed in every way TCP and the
//! record layer allow, and against hostile variations of them.

use mux::peek::{ClientHello, HelloPeek, PeekError, MAX_HELLO_LEN, MAX_PEEK_LEN};

/// A captured hello and what the peek must find in it.
struct Fixture {
    name: &'static str,
    bytes: &'static [u8],
    server_name: Option<&'static str>,
    alpn: &'static [&'static str],
    ech: bool,
    pq_key_share: bool,
}

const FIXTURES: &[Fixture] = &[
    Fixture {
        name: "rustls-pq",
        bytes: include_bytes!("fixtures/hello/rustls-pq.bin"),
        server_name: Some("turn.example.org"),
        alpn: &["h2", "http/1.1"],
        ech: false,
        pq_key_share: true,
    },
    Fixture {
        name: "openssl-mixed-case",
        bytes: include_bytes!("fixtures/hello/openssl-mixed-case.bin"),
        server_name: Some("mixed.example.org"),
        alpn: &["http/1.1"],
        ech: false,
        pq_key_share: false,
    },
    Fixture {
        name: "openssl-no-sni",
        bytes: include_bytes!("fixtures/hello/openssl-no-sni.bin"),
        server_name: None,
        alpn: &[],
        ech: false,
        pq_key_share: false,
    },
    Fixture {
        name: "curl",
        bytes: include_bytes!("fixtures/hello/curl.bin"),
        server_name: Some("x.example.org"),
        alpn: &["h2", "http/1.1"],
        ech: false,
        pq_key_share: false,
    },
    Fixture {
        name: "chromium",
        bytes: include_bytes!("fixtures/hello/chromium.bin"),
        server_name: Some("chrome.example.org"),
        alpn: &["h2", "http/1.1"],
        ech: true,
        pq_key_share: true,
    },
];

impl Fixture {
    /// The handshake message, taken out of its records.
    fn message(&self) -> Vec<u8> {
        let mut message = Vec::new();
        let mut rest = self.bytes;
        while let [_, _, _, hi, lo, tail @ ..] = rest {
            let (payload, next) = tail.split_at(usize::from(u16::from_be_bytes([*hi, *lo])));
            message.extend_from_slice(payload);
            rest = next;
        }
        message
    }

    /// Checks `hello` against what the capture holds; `records` is how many
    /// records the bytes fed were framed in.
    fn check(&self, hello: &ClientHello, records: usize, how: &str) {
        let what = format!("{} fed {how}", self.name);
        assert_eq!(hello.server_name.as_deref(), self.server_name, "{what}");
        let alpn: Vec<&[u8]> = hello.alpn.iter().map(|id| id.as_slice()).collect();
        let expected: Vec<&[u8]> = self.alpn.iter().map(|id| id.as_bytes()).collect();
        assert_eq!(alpn, expected, "{what}");
        assert_eq!(hello.ech, self.ech, "{what}");
        assert_eq!(hello.pq_key_share, self.pq_key_share, "{what}");
        assert_eq!(hello.hello_len, self.message().len(), "{what}");
        assert_eq!(hello.records, records, "{what}");
    }
}

/// Frames a handshake message into handshake records of `size` payload bytes.
fn frame(message: &[u8], size: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for part in message.chunks(size) {
        let len = u16::try_from(part.len()).expect("records are at most 2^14 bytes");
        out.extend([22, 3, 1]);
        out.extend(len.to_be_bytes());
        out.extend_from_slice(part);
    }
    out
}

/// Feeds `chunks` in order; every call but the last must ask for more.
fn feed<'a>(chunks: impl IntoIterator<Item = &'a [u8]>) -> Result<ClientHello, PeekError> {
    let mut peek = HelloPeek::new();
    let mut chunks = chunks.into_iter().peekable();
    while let Some(chunk) = chunks.next() {
        let result = peek.handle_bytes(chunk)?.cloned();
        match (result, chunks.peek()) {
            (Some(hello), None) => return Ok(hello),
            (None, Some(_)) => {}
            (Some(_), Some(_)) => panic!("hello complete before its last byte"),
            (None, None) => panic!("hello incomplete after its last byte"),
        }
    }
    panic!("nothing fed")
}

/// Appends a padding extension (RFC 7685) to a real hello so that the
/// handshake message is `len` bytes long.
fn pad_message(message: &[u8], len: usize) -> Vec<u8> {
    let session_id = 4 + 2 + 32;
    let suites = session_id + 1 + usize::from(message[session_id]);
    let compression =
        suites + 2 + usize::from(u16::from_be_bytes([message[suites], message[suites + 1]]));
    let extensions = compression + 1 + usize::from(message[compression]);

    let padding = len - message.len() - 4;
    let mut padded = message.to_vec();
    padded.extend(21u16.to_be_bytes());
    padded.extend(u16::try_from(padding).expect("fits").to_be_bytes());
    padded.resize(len, 0);
    let ext_len = u16::try_from(len - extensions - 2).expect("fits");
    padded[extensions..extensions + 2].copy_from_slice(&ext_len.to_be_bytes());
    let body = u32::try_from(len - 4).expect("fits").to_be_bytes();
    padded[1..4].copy_from_slice(&body[1..]);
    padded
}

fn rustls_fixture() -> &'static Fixture {
    &FIXTURES[0]
}

#[test]
fn fixtures_fed_whole() {
    for fixture in FIXTURES {
        let mut peek = HelloPeek::new();
        let hello = peek.handle_bytes(fixture.bytes).expect("parses").cloned();
        fixture.check(&hello.expect("complete"), 1, "whole");
        assert_eq!(peek.buffered(), fixture.bytes);
    }
}

#[test]
fn fixtures_fed_one_byte_at_a_time() {
    for fixture in FIXTURES {
        let hello = feed(fixture.bytes.chunks(1)).expect("parses");
        fixture.check(&hello, 1, "one byte at a time");
    }
}

#[test]
fn fixtures_split_at_every_offset() {
    for fixture in FIXTURES {
        for at in 1..fixture.bytes.len() {
            let (head, tail) = fixture.bytes.split_at(at);
            let hello = feed([head, tail]).expect("parses");
            fixture.check(&hello, 1, &format!("split at {at}"));
        }
    }
}

#[test]
fn fixtures_reframed_into_64_byte_records() {
    for fixture in FIXTURES {
        let message = fixture.message();
        let records = message.len().div_ceil(64);
        let bytes = frame(&message, 64);
        let mut peek = HelloPeek::new();
        let hello = peek.handle_bytes(&bytes).expect("parses").cloned();
        fixture.check(&hello.expect("complete"), records, "in 64-byte records");
        let hello = feed(bytes.chunks(1)).expect("parses");
        fixture.check(&hello, records, "in 64-byte records, one byte at a time");
        let hello = feed(bytes.chunks(7)).expect("parses");
        fixture.check(&hello, records, "in 64-byte records, 7 bytes at a time");
    }
}

#[test]
fn fixtures_reframed_into_one_byte_records() {
    for fixture in FIXTURES {
        let message = fixture.message();
        let bytes = frame(&message, 1);
        assert!(bytes.len() <= MAX_PEEK_LEN, "{}", fixture.name);
        let hello = feed([bytes.as_slice()]).expect("parses");
        fixture.check(&hello, message.len(), "in one-byte records");
    }
}

#[test]
fn truncated_fixtures_wait_for_more() {
    for fixture in FIXTURES {
        for bytes in [fixture.bytes.to_vec(), frame(&fixture.message(), 64)] {
            for len in 0..bytes.len() {
                let mut peek = HelloPeek::new();
                let result = peek.handle_bytes(&bytes[..len]);
                assert_eq!(result, Ok(None), "{} cut to {len}", fixture.name);
                assert_eq!(peek.buffered(), &bytes[..len]);
            }
        }
    }
}

#[test]
fn bytes_after_the_hello_stay_buffered() {
    for fixture in FIXTURES {
        let mut bytes = fixture.bytes.to_vec();
        // A change_cipher_spec record, as a TLS 1.3 client may send next.
        bytes.extend([20, 3, 3, 0, 1, 1]);
        let mut peek = HelloPeek::new();
        let hello = peek.handle_bytes(&bytes).expect("parses").cloned();
        fixture.check(&hello.expect("complete"), 1, "with a record after it");
        assert_eq!(peek.buffered(), bytes.as_slice());
    }
}

#[test]
fn reading_what_is_wanted_stops_at_the_hello() {
    for fixture in FIXTURES {
        let mut bytes = frame(&fixture.message(), 100);
        let hello_bytes = bytes.len();
        bytes.extend([20, 3, 3, 0, 1, 1]);
        let mut peek = HelloPeek::new();
        let mut read = 0;
        while peek.wanted() > 0 {
            let chunk = &bytes[read..read + peek.wanted()];
            read += chunk.len();
            peek.handle_bytes(chunk).expect("parses");
        }
        assert_eq!(read, hello_bytes, "{}", fixture.name);
        assert_eq!(peek.buffered(), &bytes[..hello_bytes]);
    }
}

#[test]
fn flipped_bytes_never_panic() {
    for fixture in FIXTURES {
        for bytes in [fixture.bytes.to_vec(), frame(&fixture.message(), 64)] {
            for at in 0..bytes.len() {
                for bit in 0..8 {
                    let mut flipped = bytes.clone();
                    flipped[at] ^= 1 << bit;
                    let mut peek = HelloPeek::new();
                    let result = peek.handle_bytes(&flipped).map(|hello| hello.cloned());
                    assert!(peek.buffered().len() <= MAX_PEEK_LEN);
                    let again = peek.handle_bytes(&[]).map(|hello| hello.cloned());
                    assert_eq!(
                        result, again,
                        "{} with bit {bit} of {at} flipped",
                        fixture.name
                    );
                }
            }
        }
    }
}

#[test]
fn padded_hello_of_max_len_is_read() {
    let fixture = rustls_fixture();
    let message = pad_message(&fixture.message(), MAX_HELLO_LEN);
    let hello = feed([frame(&message, 1 << 14).as_slice()]).expect("parses");
    assert_eq!(hello.hello_len, MAX_HELLO_LEN);
    assert_eq!(hello.records, 1);
    let hello = feed([frame(&message, 10_000).as_slice()]).expect("parses");
    assert_eq!(hello.records, 2);
    assert_eq!(hello.server_name.as_deref(), fixture.server_name);
    assert!(hello.pq_key_share);
}

#[test]
fn hello_just_over_max_len_is_too_large() {
    let message = pad_message(&rustls_fixture().message(), MAX_HELLO_LEN + 1);
    let bytes = frame(&message, 1 << 14);
    assert_eq!(feed([bytes.as_slice()]), Err(PeekError::TooLarge));
    // The length is judged from the handshake header, before the body arrives.
    let mut peek = HelloPeek::new();
    assert_eq!(peek.handle_bytes(&bytes[..9]), Err(PeekError::TooLarge));
}

#[test]
fn http_request_is_not_tls() {
    let mut peek = HelloPeek::new();
    assert_eq!(
        peek.handle_bytes(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
        Err(PeekError::NotTls)
    );
    assert_eq!(peek.handle_bytes(b"more"), Err(PeekError::NotTls));
}

#[test]
fn hello_in_too_many_one_byte_records_is_too_fragmented() {
    let message = pad_message(&rustls_fixture().message(), 4000);
    let bytes = frame(&message, 1);
    assert!(bytes.len() > MAX_PEEK_LEN);
    let mut peek = HelloPeek::new();
    assert_eq!(peek.handle_bytes(&bytes), Err(PeekError::TooFragmented));
    assert_eq!(peek.buffered().len(), MAX_PEEK_LEN);

    let mut peek = HelloPeek::new();
    let result = bytes
        .chunks(1000)
        .map(|chunk| peek.handle_bytes(chunk).map(|hello| hello.is_some()))
        .find(|result| *result != Ok(false));
    assert_eq!(result, Some(Err(PeekError::TooFragmented)));
}
