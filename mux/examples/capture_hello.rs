//! Captures the first flight of a real TLS client, for the ClientHello fixtures
//! in `mux/tests/fixtures/hello/`.
//!
//! ```text
//! capture_hello listen PORT OUT   accept one connection on 127.0.0.1:PORT, save its hello
//! capture_hello rustls OUT        the same, with this workspace's rustls client as the peer
//! ```
//!
//! The listener follows the record layer on its own, without the peek under
//! test: it reads whole records until the handshake message they carry is
//! complete, writes exactly those bytes and closes the connection.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

type Error = Box<dyn std::error::Error + Send + Sync>;

fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["listen", port, out] => {
            let listener = TcpListener::bind(("127.0.0.1", port.parse::<u16>()?))?;
            save(&accept_hello(&listener)?, out)
        }
        ["rustls", out] => {
            let listener = TcpListener::bind("127.0.0.1:0")?;
            let addr = listener.local_addr()?;
            let client = std::thread::spawn(move || rustls_client(addr));
            let hello = accept_hello(&listener)?;
            client
                .join()
                .map_err(|_| "rustls client thread panicked")??;
            save(&hello, out)
        }
        _ => Err("usage: capture_hello listen PORT OUT | capture_hello rustls OUT".into()),
    }
}

fn save(hello: &[u8], out: &str) -> Result<(), Error> {
    std::fs::write(out, hello)?;
    eprintln!("wrote {} bytes to {out}", hello.len());
    Ok(())
}

/// Accepts one connection and returns the records that carry its first handshake message.
fn accept_hello(listener: &TcpListener) -> Result<Vec<u8>, Error> {
    let (mut stream, peer) = listener.accept()?;
    eprintln!("connection from {peer}");
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut raw = Vec::new();
    let mut handshake = Vec::new();
    while handshake_complete(&handshake).is_none() {
        let mut header = [0u8; 5];
        stream.read_exact(&mut header)?;
        if header[0] != 22 {
            return Err(format!("record type {} is not handshake", header[0]).into());
        }
        let mut payload = vec![0u8; usize::from(u16::from_be_bytes([header[3], header[4]]))];
        stream.read_exact(&mut payload)?;
        raw.extend_from_slice(&header);
        raw.extend_from_slice(&payload);
        handshake.extend_from_slice(&payload);
    }
    Ok(raw)
}

/// The length of the first handshake message once `handshake` holds all of it.
fn handshake_complete(handshake: &[u8]) -> Option<usize> {
    let [_, a, b, c, ..] = *handshake else {
        return None;
    };
    let len = 4 + u32::from_be_bytes([0, a, b, c]) as usize;
    (handshake.len() >= len).then_some(len)
}

/// Connects with the workspace's rustls client configuration and sends its
/// hello; the handshake then fails when the listener hangs up, as intended.
fn rustls_client(addr: SocketAddr) -> Result<(), Error> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let name = rustls_pki_types::ServerName::try_from("turn.example.org")?;
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name)?;
    let mut tcp = TcpStream::connect(addr)?;
    while conn.wants_write() {
        conn.write_tls(&mut tcp)?;
    }
    tcp.flush()?;
    // Wait for the listener to close so the hello is read before the socket goes.
    let _ = tcp.read(&mut [0u8; 1]);
    Ok(())
}
