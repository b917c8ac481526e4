//! A fault-injecting TCP proxy in front of one member's Raft port: it forwards every
//! connection, and drops those from blocked source addresses (each member connects
//! from its own loopback IP), closing the ones already open. Partitioning a member is
//! blocking the others at its proxy and it at theirs.

use std::collections::HashSet;
use std::io;
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

#[derive(Default)]
struct State {
    blocked: HashSet<IpAddr>,
    /// Open connections: the source IP and both sockets (to cut them).
    open: Vec<(IpAddr, TcpStream, TcpStream)>,
}

/// A proxy listening on `addr`, forwarding to one target.
pub struct Proxy {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `target`.
    pub fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("the proxy binds");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        std::thread::spawn(move || {
            for incoming in listener.incoming() {
                let Ok(client) = incoming else { continue };
                let Ok(peer) = client.peer_addr() else { continue };
                if shared.lock().unwrap().blocked.contains(&peer.ip()) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(upstream) = TcpStream::connect(target) else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                let _ = (client.set_nodelay(true), upstream.set_nodelay(true));
                let (Ok(c2), Ok(u2)) = (client.try_clone(), upstream.try_clone()) else {
                    continue;
                };
                let (Ok(c3), Ok(u3)) = (client.try_clone(), upstream.try_clone()) else {
                    continue;
                };
                shared.lock().unwrap().open.push((peer.ip(), c3, u3));
                std::thread::spawn(move || pipe(client, upstream));
                std::thread::spawn(move || pipe(u2, c2));
            }
        });
        Proxy { addr, state }
    }

    /// Drops connections from `ips`, open ones included, until [`Proxy::heal`].
    pub fn block(&self, ips: &[IpAddr]) {
        let mut state = self.state.lock().unwrap();
        state.blocked.extend(ips.iter().copied());
        let (cut, keep): (Vec<_>, Vec<_>) = state.open.drain(..).partition(|(ip, _, _)| ips.contains(ip));
        state.open = keep;
        for (_, a, b) in cut {
            let _ = a.shutdown(Shutdown::Both);
            let _ = b.shutdown(Shutdown::Both);
        }
    }

    /// Forwards from everyone again.
    pub fn heal(&self) {
        self.state.lock().unwrap().blocked.clear();
    }
}

/// Copies `from` to `to` until either side ends, then closes both.
fn pipe(mut from: TcpStream, mut to: TcpStream) {
    let _: io::Result<u64> = io::copy(&mut from, &mut to);
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}
