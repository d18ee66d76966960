//! Real traffic between test namespaces: a bounded TCP/UDP echo server and
//! clients, all running on threads that entered the namespace.

use crate::netns::Netns;
use anyhow::{Context, Result, bail};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// An echo server in a namespace; stops when dropped (and after at most 10 minutes).
pub struct EchoServer {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl EchoServer {
    /// TCP and UDP echo on `port` on every address of `ns`. Replies are prefixed
    /// with `tag` so a client can tell which server answered.
    pub fn start(ns: &Netns, port: u16, tag: &str) -> Result<EchoServer> {
        let (tcp, udp) = ns.run(|| -> Result<(TcpListener, UdpSocket)> {
            let t = TcpListener::bind(("0.0.0.0", port)).context("tcp bind")?;
            let u = UdpSocket::bind(("0.0.0.0", port)).context("udp bind")?;
            Ok((t, u))
        })??;
        tcp.set_nonblocking(true)?;
        udp.set_read_timeout(Some(Duration::from_millis(50)))?;
        let stop = Arc::new(AtomicBool::new(false));
        let deadline = Instant::now() + Duration::from_secs(600);
        let (s1, t1) = (stop.clone(), tag.to_string());
        let tcp_thread = std::thread::spawn(move || {
            while !s1.load(Ordering::Relaxed) && Instant::now() < deadline {
                match tcp.accept() {
                    Ok((mut c, _)) => {
                        let _ = c.set_nonblocking(false);
                        let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
                        let mut buf = [0u8; 512];
                        if let Ok(n) = c.read(&mut buf) {
                            let _ = c.write_all(format!("{t1}:{}", String::from_utf8_lossy(&buf[..n])).as_bytes());
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        let (s2, t2) = (stop.clone(), tag.to_string());
        let udp_thread = std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while !s2.load(Ordering::Relaxed) && Instant::now() < deadline {
                if let Ok((n, from)) = udp.recv_from(&mut buf) {
                    let _ = udp.send_to(format!("{t2}:{}", String::from_utf8_lossy(&buf[..n])).as_bytes(), from);
                }
            }
        });
        Ok(EchoServer {
            stop,
            threads: vec![tcp_thread, udp_thread],
        })
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Connect from `ns` to `to`, send `msg`, return the reply.
pub fn tcp_request(ns: &Netns, to: SocketAddr, msg: &str) -> Result<String> {
    ns.run(|| -> Result<String> {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(2)).with_context(|| format!("connect {to}"))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        s.write_all(msg.as_bytes())?;
        let mut out = String::new();
        s.read_to_string(&mut out).with_context(|| format!("read from {to}"))?;
        if out.is_empty() {
            bail!("empty reply from {to}");
        }
        Ok(out)
    })?
}

/// One UDP datagram from `ns` to `to` and its answer (3 tries, 1 s each).
pub fn udp_request(ns: &Netns, to: SocketAddr, msg: &str) -> Result<String> {
    ns.run(|| -> Result<String> {
        let s = UdpSocket::bind(("0.0.0.0", 0))?;
        s.set_read_timeout(Some(Duration::from_secs(1)))?;
        let mut buf = [0u8; 512];
        for _ in 0..3 {
            s.send_to(msg.as_bytes(), to)?;
            if let Ok((n, _)) = s.recv_from(&mut buf) {
                return Ok(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
        bail!("no UDP answer from {to}")
    })?
}
