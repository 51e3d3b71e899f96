//! A TCP proxy on loopback between an app and a service (PostgreSQL, Redis), for tests of
//! what the app does when the service goes away: [`FaultProxy::cut`] breaks every open
//! connection and closes the port, as a stopped server would; [`FaultProxy::stall`] keeps
//! every connection open but carries nothing more, as a network partition would;
//! [`FaultProxy::restore`] lets connections through again. The shared local services keep
//! running for every other test.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use tokio::{
    net::{TcpListener, TcpStream},
    sync::watch,
    task::JoinSet,
};

/// What the proxy does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Forwards it.
    Pass,
    /// Refuses connections (its port closed) and has broken the open ones.
    Cut,
    /// Holds connections open, forwarding nothing.
    Stalled,
}

/// A proxy to one upstream address. Stops (with every connection) when dropped.
pub struct FaultProxy {
    /// Where the app should connect instead of the upstream.
    pub addr: SocketAddr,
    upstream: SocketAddr,
    mode: watch::Sender<Mode>,
    connections: Arc<Mutex<JoinSet<()>>>,
    /// Accepts connections while not cut (a cut closes the port, as a stopped server's).
    acceptor: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl FaultProxy {
    /// Listens on a free loopback port, forwarding each connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let (mode, _) = watch::channel(Mode::Pass);
        let proxy = Self {
            addr,
            upstream,
            mode,
            connections: Arc::new(Mutex::new(JoinSet::new())),
            acceptor: Mutex::new(None),
        };
        proxy.accept_on(listener);
        proxy
    }

    fn accept_on(&self, listener: std::net::TcpListener) {
        listener.set_nonblocking(true).expect("non-blocking");
        let listener = TcpListener::from_std(listener).expect("tokio listener");
        let (upstream, mode, connections) =
            (self.upstream, self.mode.clone(), self.connections.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    // A transient failure (out of descriptors): keep listening.
                    tokio::task::yield_now().await;
                    continue;
                };
                connections.lock().expect("connections").spawn(forward(
                    client,
                    upstream,
                    mode.subscribe(),
                ));
            }
        });
        *self.acceptor.lock().expect("acceptor") = Some(task);
    }

    /// The service is gone: the port refuses connections, and every open one is broken
    /// (closed by the time this returns).
    pub async fn cut(&self) {
        self.mode.send_replace(Mode::Cut);
        let acceptor = self.acceptor.lock().expect("acceptor").take();
        if let Some(acceptor) = acceptor {
            acceptor.abort();
            // Stopped, so it spawns nothing more into the set taken below.
            let _ = acceptor.await;
        }
        let mut open = std::mem::take(&mut *self.connections.lock().expect("connections"));
        open.abort_all();
        while open.join_next().await.is_some() {}
    }

    /// The network is partitioned: connections stay open (new ones too) and carry nothing,
    /// so whoever waits for an answer waits until their own deadline.
    pub fn stall(&self) {
        self.mode.send_replace(Mode::Stalled);
    }

    /// The service is back: the port accepts again and new connections go through; those
    /// held by a stall are closed (what was sent meanwhile is lost, as across a real
    /// partition).
    pub fn restore(&self) {
        let was = self.mode.send_replace(Mode::Pass);
        if was == Mode::Cut {
            let listener =
                std::net::TcpListener::bind(self.addr).expect("bind the proxy's port again");
            self.accept_on(listener);
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(acceptor) = self.acceptor.lock().expect("acceptor").take() {
            acceptor.abort();
        }
        self.connections.lock().expect("connections").abort_all();
    }
}

/// Carries one connection until a stall, then holds it open until the stall ends.
async fn forward(mut client: TcpStream, upstream: SocketAddr, mut mode: watch::Receiver<Mode>) {
    if *mode.borrow_and_update() == Mode::Pass
        && let Ok(mut server) = TcpStream::connect(upstream).await
    {
        tokio::select! {
            _ = tokio::io::copy_bidirectional(&mut client, &mut server) => return,
            _ = mode.wait_for(|m| *m == Mode::Stalled) => {}
        }
    }
    let _ = mode.wait_for(|m| *m != Mode::Stalled).await;
}
