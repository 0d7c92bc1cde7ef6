//! A TCP proxy that tests cut and reopen.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;

/// A TCP proxy whose connections the test can cut, and which can refuse
/// new connections for a while.
pub struct Proxy {
    pub addr: SocketAddr,
    generation: tokio::sync::watch::Sender<u64>,
    /// Whether new connections are let through.
    pub open: Arc<std::sync::atomic::AtomicBool>,
}

impl Proxy {
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (generation, _) = tokio::sync::watch::channel(0u64);
        let open = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (gen_tx, open2) = (generation.clone(), open.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut down, _)) = listener.accept().await else {
                    return;
                };
                if !open2.load(std::sync::atomic::Ordering::SeqCst) {
                    continue; // dropped: the client sees a failed handshake
                }
                let mut cut = gen_tx.subscribe();
                tokio::spawn(async move {
                    let Ok(mut up) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut down, &mut up) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Proxy {
            addr,
            generation,
            open,
        }
    }

    /// Drops every proxied connection.
    pub fn cut(&self) {
        self.generation.send_modify(|g| *g += 1);
    }
}
