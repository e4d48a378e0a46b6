//! The reference proxy: the least a tokio program can do to pass a TLS
//! connection through, with none of the mux's work.
//!
//! It reads the first bytes a client sends, connects to the upstream and
//! writes them there, then copies both ways with tokio's
//! `copy_bidirectional`, on the same runtime flavour and worker count as
//! edge, with `TCP_NODELAY` on both legs as edge sets it. What edge's
//! passthrough adds over this proxy is the mux's own cost (the peek, the
//! routing table, limits, deadlines and metrics); what this proxy adds over
//! the bare server is the floor that tokio sets for any passthrough.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

/// Pause after a failed accept (out of descriptors), so the loop does not spin.
const ACCEPT_PAUSE: Duration = Duration::from_millis(10);

/// The first read: a ClientHello fits, post-quantum key shares included.
const FIRST_READ: usize = 4096;

/// Proxies `listen` to `upstream` until the process is killed.
pub(crate) async fn run(listen: SocketAddr, upstream: SocketAddr) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    // Spawned, as edge spawns its accept loop onto a runtime worker.
    let accepting = tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((tcp, _)) => {
                    tokio::spawn(relay(tcp, upstream));
                }
                Err(e) => {
                    eprintln!("edge-bench proxy: accept failed: {e}");
                    tokio::time::sleep(ACCEPT_PAUSE).await;
                }
            }
        }
    });
    accepting.await.context("the accept loop ended")
}

async fn relay(mut client: TcpStream, upstream: SocketAddr) {
    let _ = client.set_nodelay(true);
    let mut first = vec![0u8; FIRST_READ];
    let n = match client.read(&mut first).await {
        Ok(0) | Err(_) => return,
        Ok(n) => n,
    };
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = server.set_nodelay(true);
    if server.write_all(&first[..n]).await.is_err() {
        return;
    }
    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
}
