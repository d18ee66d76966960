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

/// `ip`:`port` as a socket address, either family.
pub fn sa(ip: &str, port: u16) -> SocketAddr {
    if ip.contains(':') {
        format!("[{ip}]:{port}").parse().expect("an IPv6 address")
    } else {
        format!("{ip}:{port}").parse().expect("an IPv4 address")
    }
}

/// An echo server in a namespace; stops when dropped (and after at most 10 minutes).
pub struct EchoServer {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl EchoServer {
    /// TCP and UDP echo on `port` on every address of `ns`. Replies are prefixed
    /// with `tag` so a client can tell which server answered.
    pub fn start(ns: &Netns, port: u16, tag: &str) -> Result<EchoServer> {
        EchoServer::start_with(ns, port, tag, false)
    }

    /// The same, each reply also naming the address it came from, as the
    /// server saw it: `tag@address:message` (source preservation tests).
    pub fn start_telling_peer(ns: &Netns, port: u16, tag: &str) -> Result<EchoServer> {
        EchoServer::start_with(ns, port, tag, true)
    }

    fn start_with(ns: &Netns, port: u16, tag: &str, peer: bool) -> Result<EchoServer> {
        // "::ffff:a.b.c.d" is how an IPv6 socket names an IPv4 peer.
        let label = move |tag: &str, from: SocketAddr| -> String {
            if !peer {
                return tag.to_string();
            }
            let ip = match from.ip() {
                std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(v6.to_string(), |v4| v4.to_string()),
                v4 => v4.to_string(),
            };
            format!("{tag}@{ip}")
        };
        let (tcp, udp) = ns.run(|| -> Result<(TcpListener, UdpSocket)> {
            // `::` with the default bindv6only=0 takes IPv4 (mapped) and IPv6 alike.
            let t = TcpListener::bind(("::", port)).context("tcp bind")?;
            let u = UdpSocket::bind(("::", port)).context("udp bind")?;
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
                    Ok((mut c, from)) => {
                        let _ = c.set_nonblocking(false);
                        let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
                        let mut buf = [0u8; 512];
                        if let Ok(n) = c.read(&mut buf) {
                            let who = label(&t1, from);
                            let _ = c.write_all(format!("{who}:{}", String::from_utf8_lossy(&buf[..n])).as_bytes());
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        let (s2, t2) = (stop.clone(), tag.to_string());
        let udp_thread = std::thread::spawn(move || {
            // Whole datagrams, the largest included (fragmentation tests).
            let mut buf = vec![0u8; 65536];
            while !s2.load(Ordering::Relaxed) && Instant::now() < deadline {
                if let Ok((n, from)) = udp.recv_from(&mut buf) {
                    let who = label(&t2, from);
                    let _ = udp.send_to(format!("{who}:{}", String::from_utf8_lossy(&buf[..n])).as_bytes(), from);
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
        let s = TcpStream::connect_timeout(&to, Duration::from_secs(2)).with_context(|| format!("connect {to}"))?;
        exchange(s, to, msg)
    })?
}

/// Send `msg` on a connected stream (to `to`) and read the reply to its end.
pub fn exchange(mut s: TcpStream, to: SocketAddr, msg: &str) -> Result<String> {
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(msg.as_bytes())?;
    let mut out = String::new();
    s.read_to_string(&mut out).with_context(|| format!("read from {to}"))?;
    if out.is_empty() {
        bail!("empty reply from {to}");
    }
    Ok(out)
}

/// [`tcp_request`] from a given local port (`SO_REUSEADDR`, so a port whose last
/// connection the client closed second is free at once, and two
/// connections to different destinations can share it), connecting for at
/// most `connect`: a client reusing its port toward another frontend.
pub fn tcp_request_from_port(ns: &Netns, port: u16, to: SocketAddr, msg: &str, connect: Duration) -> Result<String> {
    exchange(tcp_connect_from_port(ns, port, to, connect)?, to, msg)
}

/// A connection from `ns`'s local `port` to `to` (see
/// [`tcp_request_from_port`]), for [`exchange`] or a [`Session`].
pub fn tcp_connect_from_port(ns: &Netns, port: u16, to: SocketAddr, connect: Duration) -> Result<TcpStream> {
    use nix::sys::socket::{
        AddressFamily, SockFlag, SockType, SockaddrStorage, bind, connect as connect_to, setsockopt, socket, sockopt,
    };
    use std::os::fd::AsRawFd;
    ns.run(|| -> Result<TcpStream> {
        let family = if to.is_ipv6() {
            AddressFamily::Inet6
        } else {
            AddressFamily::Inet
        };
        let fd = socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None).context("socket")?;
        setsockopt(&fd, sockopt::ReuseAddr, &true).context("SO_REUSEADDR")?;
        // A blocking connect gives up after the send timeout.
        let limit = nix::sys::time::TimeVal::new(connect.as_secs() as i64, connect.subsec_micros() as i64);
        setsockopt(&fd, sockopt::SendTimeout, &limit).context("SO_SNDTIMEO")?;
        let any: SocketAddr = if to.is_ipv6() {
            format!("[::]:{port}")
        } else {
            format!("0.0.0.0:{port}")
        }
        .parse()
        .expect("an address");
        bind(fd.as_raw_fd(), &SockaddrStorage::from(any)).with_context(|| format!("bind port {port}"))?;
        match connect_to(fd.as_raw_fd(), &SockaddrStorage::from(to)) {
            Ok(()) => Ok(TcpStream::from(fd)),
            // What a blocking connect says when the send timeout ends it.
            Err(nix::errno::Errno::EINPROGRESS) => bail!("connect {to} from port {port}: timed out after {connect:?}"),
            Err(e) => Err(e).with_context(|| format!("connect {to} from port {port}")),
        }
    })?
}

/// One UDP datagram from `ns` to `to` and its answer (3 tries, 1 s each).
pub fn udp_request(ns: &Netns, to: SocketAddr, msg: &str) -> Result<String> {
    let any: std::net::IpAddr = if to.is_ipv6() {
        std::net::Ipv6Addr::UNSPECIFIED.into()
    } else {
        std::net::Ipv4Addr::UNSPECIFIED.into()
    };
    udp_request_from(ns, any, to, msg)
}

/// One datagram of any size (up to 64 KiB: larger than the path's MTU, it
/// leaves in fragments) from a socket in `ns` connected to `to`, and the
/// answer (one try, 2 s).
pub fn udp_large_request(ns: &Netns, to: SocketAddr, msg: &[u8]) -> Result<String> {
    ns.run(|| -> Result<String> {
        let any = if to.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" };
        let s = UdpSocket::bind(any)?;
        s.connect(to)?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        s.send(msg)?;
        let mut buf = vec![0u8; 65536];
        let n = s
            .recv(&mut buf)
            .with_context(|| format!("no answer from {to} to {} bytes", msg.len()))?;
        Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
    })?
}

/// One UDP datagram from `ns`, sent from the local address `from`, and its
/// answer (3 tries, 1 s each).
pub fn udp_request_from(ns: &Netns, from: std::net::IpAddr, to: SocketAddr, msg: &str) -> Result<String> {
    ns.run(|| -> Result<String> {
        let s = UdpSocket::bind(SocketAddr::new(from, 0)).with_context(|| format!("bind {from}"))?;
        s.set_read_timeout(Some(Duration::from_secs(1)))?;
        let mut buf = [0u8; 512];
        for _ in 0..3 {
            s.send_to(msg.as_bytes(), to)?;
            if let Ok((n, _)) = s.recv_from(&mut buf) {
                return Ok(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
        bail!("no UDP answer from {to} to {from}")
    })?
}

/// A TCP echo server that keeps each connection open, answering every
/// message on it until the client closes (bounded: 10 minutes).
pub struct StreamEcho {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl StreamEcho {
    pub fn start(ns: &Netns, port: u16, tag: &str) -> Result<StreamEcho> {
        let l = ns.run(|| TcpListener::bind(("::", port)).context("tcp bind"))??;
        l.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let deadline = Instant::now() + Duration::from_secs(600);
        let (s, tag) = (stop.clone(), tag.to_string());
        let thread = std::thread::spawn(move || {
            let mut conns: Vec<JoinHandle<()>> = Vec::new();
            while !s.load(Ordering::Relaxed) && Instant::now() < deadline {
                match l.accept() {
                    Ok((mut c, _)) => {
                        let (s, tag) = (s.clone(), tag.clone());
                        conns.push(std::thread::spawn(move || {
                            let _ = c.set_nonblocking(false);
                            let _ = c.set_read_timeout(Some(Duration::from_millis(100)));
                            let mut buf = [0u8; 512];
                            while !s.load(Ordering::Relaxed) && Instant::now() < deadline {
                                match c.read(&mut buf) {
                                    Ok(0) => break,
                                    Ok(n) => {
                                        let reply = format!("{tag}:{}", String::from_utf8_lossy(&buf[..n]));
                                        if c.write_all(reply.as_bytes()).is_err() {
                                            break;
                                        }
                                    }
                                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                                    Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                                    Err(_) => break,
                                }
                            }
                        }));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
            for c in conns {
                let _ = c.join();
            }
        });
        Ok(StreamEcho {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for StreamEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A client connection that stays open across several exchanges.
pub struct Session {
    stream: TcpStream,
}

impl Session {
    pub fn open(ns: &Netns, to: SocketAddr) -> Result<Session> {
        let stream = ns
            .run(|| TcpStream::connect_timeout(&to, Duration::from_secs(2)))?
            .with_context(|| format!("connect {to}"))?;
        Session::on(stream)
    }

    /// A session on a connection from `ns`'s local `port`
    /// ([`tcp_connect_from_port`]).
    pub fn from_port(ns: &Netns, port: u16, to: SocketAddr, connect: Duration) -> Result<Session> {
        Session::on(tcp_connect_from_port(ns, port, to, connect)?)
    }

    fn on(stream: TcpStream) -> Result<Session> {
        stream.set_read_timeout(Some(Duration::from_secs(2)))?;
        Ok(Session { stream })
    }

    /// Send `msg` and read one reply.
    pub fn ask(&mut self, msg: &str) -> Result<String> {
        self.stream.write_all(msg.as_bytes())?;
        let mut buf = [0u8; 512];
        let n = self.stream.read(&mut buf).context("reading the reply")?;
        if n == 0 {
            bail!("connection closed by the peer");
        }
        Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
    }

    pub fn local_addr(&self) -> Result<SocketAddr> {
        Ok(self.stream.local_addr()?)
    }
}

/// Capture ARP frames on `dev` in `ns` for up to `wait`, returning every
/// gratuitous one (sender IP == target IP) as (sender MAC, IP).
pub fn capture_gratuitous_arp(
    ns: &Netns,
    dev: &str,
    wait: Duration,
    during: impl FnOnce(),
) -> Result<Vec<(String, String)>> {
    let fd = ns.run(|| -> Result<i32> {
        // SAFETY: a socket we own; closed below on every path.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(0x0806u16.to_be())) };
        if fd < 0 {
            bail!("packet socket: {}", std::io::Error::last_os_error());
        }
        Ok(fd)
    })??;
    let guard = FdGuard(fd);
    let ifindex = ns.run(|| nix::net::if_::if_nametoindex(dev))??;
    // SAFETY: fully initialised sockaddr_ll for bind.
    unsafe {
        let mut sll: libc::sockaddr_ll = std::mem::zeroed();
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = 0x0806u16.to_be();
        sll.sll_ifindex = ifindex as i32;
        if libc::bind(
            guard.0,
            (&raw const sll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        ) < 0
        {
            bail!("bind packet socket: {}", std::io::Error::last_os_error());
        }
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 100_000,
        };
        libc::setsockopt(
            guard.0,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const tv).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        );
    }
    during();
    let deadline = Instant::now() + wait;
    let mut found = Vec::new();
    let mut buf = [0u8; 256];
    while Instant::now() < deadline {
        // SAFETY: reading into our own buffer.
        let n = unsafe { libc::recv(guard.0, buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 42 {
            continue;
        }
        let (spa, tpa) = (&buf[28..32], &buf[38..42]);
        if spa == tpa {
            let mac = buf[22..28]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(":");
            found.push((mac, format!("{}.{}.{}.{}", spa[0], spa[1], spa[2], spa[3])));
        }
    }
    Ok(found)
}

/// Closes the capture socket on every path.
struct FdGuard(i32);
impl Drop for FdGuard {
    fn drop(&mut self) {
        // SAFETY: closing the fd this guard owns.
        unsafe { libc::close(self.0) };
    }
}

/// An Ethernet frame carrying one IPv4 UDP datagram, every field as given
/// (the source MAC and address included): what a process with a packet
/// socket (`CAP_NET_RAW`) can put on its interface. The UDP checksum is
/// left 0 (none, valid over IPv4).
pub fn udp4_frame(
    (src_mac, dst_mac): ([u8; 6], [u8; 6]),
    (src, dst): (std::net::Ipv4Addr, std::net::Ipv4Addr),
    (sport, dport): (u16, u16),
    payload: &[u8],
) -> Vec<u8> {
    let total = 20 + 8 + payload.len();
    let mut f = Vec::with_capacity(14 + total);
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let c = sluice_tc_datapath::checksum::of(&ip, 0);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&dport.to_be_bytes());
    f.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(payload);
    f
}

/// Put `frame` on `dev` in `ns` as it is, through a packet socket: true
/// if the device took it, false if its egress dropped it (a tc program's
/// drop reaches the sender as `ENOBUFS`).
pub fn send_frame(ns: &Netns, dev: &str, frame: &[u8]) -> Result<bool> {
    ns.run(|| -> Result<bool> {
        let ifindex = nix::net::if_::if_nametoindex(dev)?;
        // SAFETY: a socket we own, closed by the guard on every path.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
        if fd < 0 {
            bail!("packet socket: {}", std::io::Error::last_os_error());
        }
        let guard = FdGuard(fd);
        // SAFETY: a fully initialised sockaddr_ll and our own buffer.
        let sent = unsafe {
            let mut sll: libc::sockaddr_ll = std::mem::zeroed();
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_ifindex = ifindex as i32;
            sll.sll_halen = 6;
            sll.sll_addr[..6].copy_from_slice(&frame[..6]);
            libc::sendto(
                guard.0,
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&raw const sll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if sent == frame.len() as isize {
            return Ok(true);
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENOBUFS) {
            return Ok(false);
        }
        bail!("send on {dev}: {e}")
    })?
}

/// The index and MAC of `dev` in `ns`, as the namespace lists them.
pub fn index_and_mac(ns: &Netns, dev: &str) -> Result<(u32, [u8; 6])> {
    let line = ns.ip(&["-o", "link", "show", dev])?;
    let index = line.split(':').next().unwrap_or_default().trim().parse()?;
    let text = line
        .split("link/ether ")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .with_context(|| format!("no MAC for {dev} in: {line}"))?;
    let mut mac = [0u8; 6];
    for (b, h) in mac.iter_mut().zip(text.split(':')) {
        *b = u8::from_str_radix(h, 16)?;
    }
    Ok((index, mac))
}

/// The cookie of `ns` (`SO_NETNS_COOKIE`), as the datapath knows it.
pub fn netns_cookie(ns: &Netns) -> Result<u64> {
    Ok(ns.run(sluice_tc_datapath::netns_cookie::current)??)
}
