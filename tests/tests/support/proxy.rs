//! A TCP proxy that tests cut, stall and reopen.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

/// A TCP proxy whose connections the test can cut or stall, and which can
/// refuse new connections for a while.
pub struct Proxy {
    pub addr: SocketAddr,
    generation: watch::Sender<u64>,
    /// While true, bytes read are held instead of forwarded (the
    /// connections stay open, as on a link that silently stops).
    stalled: watch::Sender<bool>,
    /// Whether new connections are let through.
    pub open: Arc<std::sync::atomic::AtomicBool>,
}

impl Proxy {
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (generation, _) = watch::channel(0u64);
        let (stalled, _) = watch::channel(false);
        let open = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (gen_tx, open2, stall_tx) = (generation.clone(), open.clone(), stalled.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut down, _)) = listener.accept().await else {
                    return;
                };
                if !open2.load(std::sync::atomic::Ordering::SeqCst) {
                    continue; // dropped: the client sees a failed handshake
                }
                let mut cut = gen_tx.subscribe();
                let (stall_up, stall_down) = (stall_tx.subscribe(), stall_tx.subscribe());
                tokio::spawn(async move {
                    let Ok(mut up) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (down_r, down_w) = down.split();
                    let (up_r, up_w) = up.split();
                    tokio::select! {
                        _ = async {
                            tokio::join!(
                                pump(down_r, up_w, stall_up),
                                pump(up_r, down_w, stall_down)
                            )
                        } => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Proxy {
            addr,
            generation,
            stalled,
            open,
        }
    }

    /// Holds every byte in both directions until [`Proxy::resume`] (or a
    /// cut), without closing anything.
    pub fn stall(&self) {
        self.stalled.send_replace(true);
    }

    /// Forwards again what was held, and what follows.
    pub fn resume(&self) {
        self.stalled.send_replace(false);
    }

    /// Drops every proxied connection.
    pub fn cut(&self) {
        self.generation.send_modify(|g| *g += 1);
    }
}

/// Copies `from` to `to`, holding what it read while `stalled` is true.
async fn pump(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    mut stalled: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if stalled.wait_for(|s| !*s).await.is_err() || to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}
