//! A listener the harness holds for the whole run and lends to each
//! incarnation of a node.
//!
//! While the node runs, the node accepts on it (an inherited socket). When
//! the node is killed the harness swaps it for a socket bound to the same
//! port that does not listen, so connections are refused, as they would be
//! to a dead process, and no other process can take the port; a restart
//! listens on that socket. (Shutting the listening socket down instead
//! would leave its receive side shut for every connection it accepts
//! later.) Ports come from a range below the kernel's ephemeral one, so
//! outgoing connections never hold them either.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU16, Ordering};

use socket2::{Domain, Socket, Type};

/// First port of the harness's range; the kernel's ephemeral range starts
/// at 32768 by default.
const LO: u16 = 30_000;
const SPAN: u16 = 2_700;
/// Queue of connections waiting for the node to accept.
const BACKLOG: i32 = 1024;

static NEXT: AtomicU16 = AtomicU16::new(0);

pub struct HeldListener {
    socket: Socket,
    addr: SocketAddr,
    listening: bool,
}

impl HeldListener {
    /// Binds a free port of the harness's range on `ip` and listens.
    pub fn bind(ip: IpAddr) -> io::Result<Self> {
        // Processes running side by side start at different places.
        let seed = u16::try_from(std::process::id() % u32::from(SPAN)).unwrap_or(0);
        let mut last = None;
        for _ in 0..SPAN {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let port = LO + seed.wrapping_add(n) % SPAN;
            match Self::bind_port(SocketAddr::new(ip, port)) {
                Ok(l) => return Ok(l),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("no free port")))
    }

    /// Binds exactly `addr` (an explicit port stays bound while not listening).
    pub fn bind_port(addr: SocketAddr) -> io::Result<Self> {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
        // Listening again after a node's death must not trip over its
        // connections in TIME_WAIT.
        socket.set_reuse_address(true)?;
        socket.bind(&addr.into())?;
        socket.listen(BACKLOG)?;
        Ok(HeldListener {
            socket,
            addr,
            listening: true,
        })
    }

    /// A listener on 127.0.0.1.
    pub fn loopback() -> io::Result<Self> {
        Self::bind(IpAddr::from([127, 0, 0, 1]))
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A copy of the socket for a child process.
    pub fn share(&self) -> io::Result<OwnedFd> {
        Ok(self.socket.try_clone()?.into())
    }

    /// Stops listening, keeping the port: connections are refused.
    pub fn close(&mut self) -> io::Result<()> {
        if self.listening {
            // The listening socket must go before its replacement binds.
            let fresh = Socket::new(Domain::for_address(self.addr), Type::STREAM, None)?;
            fresh.set_reuse_address(true)?;
            let old = std::mem::replace(&mut self.socket, fresh);
            drop(old);
            // A process the node started may hold the inherited socket for a
            // moment after the node exits: wait for the port, briefly.
            let mut tries = 0;
            loop {
                match self.socket.bind(&self.addr.into()) {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::AddrInUse && tries < 60 => {
                        tries += 1;
                        std::thread::sleep(std::time::Duration::from_millis(50));
                    }
                    Err(e) => return Err(e),
                }
            }
            self.listening = false;
        }
        Ok(())
    }

    /// Listens again (before a node restarts).
    pub fn open(&mut self) -> io::Result<()> {
        if !self.listening {
            self.socket.listen(BACKLOG)?;
            self.listening = true;
        }
        Ok(())
    }
}

/// A port of the harness's range that is free now, for baseline programs
/// that bind their own (etcd, nginx). It is released at once, so another
/// process could take it first; rouse nodes get a [`HeldListener`].
pub fn pick_port(ip: IpAddr) -> io::Result<u16> {
    Ok(HeldListener::bind(ip)?.addr().port())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpStream;

    #[test]
    fn a_closed_listener_refuses_but_keeps_its_port() {
        let mut l = HeldListener::loopback().unwrap();
        let addr = l.addr();
        assert!(addr.port() >= LO && addr.port() < LO + SPAN);
        assert!(TcpStream::connect(addr).is_ok());
        l.close().unwrap();
        let e = TcpStream::connect(addr).expect_err("refused while closed");
        assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused);
        // (A socket with SO_REUSEADDR could bind it while it is closed:
        // the range is the harness's own, and each process walks it once.)
        let other = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        assert!(
            other.bind(&addr.into()).is_err(),
            "nobody else can take the port"
        );
        l.open().unwrap();
        assert!(TcpStream::connect(addr).is_ok());
    }

    /// A process that inherits the socket after a restart serves its
    /// connections as the first one did: a connection stays open for a
    /// second request (an event-driven server sees no read side shut).
    #[tokio::test]
    async fn after_a_restart_connections_serve_more_than_one_request() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut l = HeldListener::loopback().unwrap();
        for incarnation in 0..2 {
            let std_listener = std::net::TcpListener::from(l.share().unwrap());
            std_listener.set_nonblocking(true).unwrap();
            let server = tokio::net::TcpListener::from_std(std_listener).unwrap();
            let mut client = tokio::net::TcpStream::connect(l.addr()).await.unwrap();
            let (mut served, _) = server.accept().await.unwrap();
            let mut buf = [0u8; 2];
            for msg in [b"a1", b"b2"] {
                let read = async { served.read_exact(&mut buf).await.map(|_| buf) };
                let write = async {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    client.write_all(msg).await
                };
                let (got, wrote) = tokio::join!(read, write);
                wrote.unwrap();
                assert_eq!(
                    &got.unwrap_or_else(|e| panic!("incarnation {incarnation}: {e}")),
                    msg
                );
            }
            // The node dies: its end of the connection closes first.
            drop((served, server));
            drop(client);
            l.close().unwrap();
            l.open().unwrap();
        }
    }

    #[test]
    fn listeners_get_distinct_ports() {
        let a = HeldListener::loopback().unwrap();
        let b = HeldListener::loopback().unwrap();
        assert_ne!(a.addr(), b.addr());
    }
}
