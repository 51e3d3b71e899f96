//! A TCP proxy on loopback between an app and a service (PostgreSQL, Redis), for tests of
//! what the app does when the service goes away: [`FaultProxy::cut`] breaks every open
//! connection and refuses new ones, as a stopped server would; [`FaultProxy::restore`]
//! lets connections through again. The shared local services keep running for every other
//! test.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

use tokio::{
    net::{TcpListener, TcpStream},
    task::JoinSet,
};

/// A proxy to one upstream address. Stops (with every connection) when dropped.
pub struct FaultProxy {
    /// Where the app should connect instead of the upstream.
    pub addr: SocketAddr,
    cut: Arc<AtomicBool>,
    connections: Arc<Mutex<JoinSet<()>>>,
    acceptor: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on a free loopback port, forwarding each connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let cut = Arc::new(AtomicBool::new(false));
        let connections = Arc::new(Mutex::new(JoinSet::new()));
        let acceptor = tokio::spawn({
            let cut = cut.clone();
            let connections = connections.clone();
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    // Checked under the lock `cut` holds while it breaks the connections, so
                    // none accepted meanwhile slips through.
                    let mut open = connections.lock().expect("connections");
                    if cut.load(Ordering::SeqCst) {
                        // Refused: closed before a byte is exchanged.
                        drop(client);
                        continue;
                    }
                    open.spawn(forward(client, upstream));
                }
            }
        });
        Self {
            addr,
            cut,
            connections,
            acceptor,
        }
    }

    /// The service is gone: every open connection is broken (closed by the time this
    /// returns) and new ones are closed at once.
    pub async fn cut(&self) {
        let mut open = {
            let mut open = self.connections.lock().expect("connections");
            self.cut.store(true, Ordering::SeqCst);
            std::mem::take(&mut *open)
        };
        open.abort_all();
        while open.join_next().await.is_some() {}
    }

    /// The service is back: new connections go through.
    pub fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.acceptor.abort();
        self.connections.lock().expect("connections").abort_all();
    }
}

async fn forward(mut client: TcpStream, upstream: SocketAddr) {
    if let Ok(mut server) = TcpStream::connect(upstream).await {
        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
    }
}
