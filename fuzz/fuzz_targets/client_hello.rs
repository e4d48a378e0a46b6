//! Feeds arbitrary bytes to the ClientHello peek in chunks of a size chosen
//! by the first input byte, and checks what must hold whatever the peer sends.

#![no_main]

use libfuzzer_sys::fuzz_target;
use mux::peek::{ClientHello, HelloPeek, PeekError, MAX_PEEK_LEN};

type Outcome = Result<Option<ClientHello>, PeekError>;

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, stream)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk) + 1;
    let chunked = feed_in_chunks(stream, chunk);

    // Up to the buffer's size nothing depends on how TCP cut the stream.
    if stream.len() <= MAX_PEEK_LEN {
        let mut whole = HelloPeek::new();
        let outcome = whole.handle_bytes(stream).map(|hello| hello.cloned());
        assert_eq!(outcome, chunked, "chunks of {chunk} disagree with one read");
    }
});

/// Feeds `stream` `chunk` bytes at a time, checking the reader after every call.
fn feed_in_chunks(stream: &[u8], chunk: usize) -> Outcome {
    let mut peek = HelloPeek::new();
    let mut outcome: Outcome = Ok(None);
    let mut fed = 0;
    for piece in stream.chunks(chunk) {
        let result = peek.handle_bytes(piece).map(|hello| hello.cloned());
        assert!(peek.buffered().len() <= MAX_PEEK_LEN);
        if outcome != Ok(None) {
            // A hello or an error, once returned, is final.
            assert_eq!(result, outcome);
            assert_eq!(peek.wanted(), 0);
            continue;
        }
        if result == Ok(None) {
            assert!(peek.wanted() > 0, "an unfinished peek wants bytes");
        }
        if result != Err(PeekError::TooFragmented) {
            fed += piece.len();
            assert_eq!(
                peek.buffered(),
                &stream[..fed],
                "buffer is the stream so far"
            );
        }
        if let Ok(Some(hello)) = &result {
            assert!(hello.hello_len <= mux::peek::MAX_HELLO_LEN);
            assert!(hello.records >= 1);
        }
        outcome = result;
    }
    outcome
}
