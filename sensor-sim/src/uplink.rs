//! A cuttable uplink: a TCP relay between the gateway and its upstream
//! broker. Cutting it closes every relayed connection and refuses new ones,
//! which is what a plant's WAN link going down looks like to the gateway.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Handle to a running relay.
#[derive(Clone)]
pub struct Uplink {
    up: Arc<watch::Sender<bool>>,
    pub listen: SocketAddr,
}

impl Uplink {
    /// Starts relaying from `listen` (port 0 picks one) to `target`.
    pub async fn start(listen: SocketAddr, target: SocketAddr) -> std::io::Result<Uplink> {
        let listener = TcpListener::bind(listen).await?;
        let listen = listener.local_addr()?;
        let (tx, rx) = watch::channel(true);
        let up = Arc::new(tx);
        tokio::spawn(relay(Some(listener), listen, target, rx));
        Ok(Uplink { up, listen })
    }

    /// Cuts the link: existing connections are closed, new ones refused.
    pub fn cut(&self) {
        let _ = self.up.send(false);
    }

    /// Restores the link.
    pub fn restore(&self) {
        let _ = self.up.send(true);
    }

    pub fn is_up(&self) -> bool {
        *self.up.borrow()
    }
}

async fn relay(
    mut listener: Option<TcpListener>,
    listen: SocketAddr,
    target: SocketAddr,
    mut state: watch::Receiver<bool>,
) {
    loop {
        if !*state.borrow() {
            // Refuse connections while cut by not listening at all.
            listener = None;
            if state.changed().await.is_err() {
                return;
            }
            continue;
        }
        let l = match &listener {
            Some(l) => l,
            None => match TcpListener::bind(listen).await {
                Ok(l) => listener.insert(l),
                Err(_) => {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        tokio::select! {
            r = l.accept() => {
                if let Ok((client, _)) = r {
                    tokio::spawn(pipe(client, target, state.clone()));
                }
            }
            r = state.changed() => if r.is_err() { return },
        }
    }
}

async fn pipe(mut client: TcpStream, target: SocketAddr, mut state: watch::Receiver<bool>) {
    let Ok(mut server) = TcpStream::connect(target).await else {
        return;
    };
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
        _ = async {
            loop {
                let up = *state.borrow_and_update();
                if !up || state.changed().await.is_err() {
                    break;
                }
            }
        } => {}
    }
}
