//! A client for the socket-level tests: run inside a test's cgroup (and a
//! node's namespace), it talks to one address and prints one JSON line
//! with what its socket saw, so the test reads the hooks' work from the
//! socket's side.
//!
//!     sock-client tcp ADDR MSG            connect, getpeername, send, read
//!     sock-client udp-connected ADDR MSG  connect, send, recvfrom
//!     sock-client udp ADDR MSG            sendto, recvfrom (a DNS-style exchange)
//!     sock-client tcp-session ADDR        connect, then one exchange per stdin line
//!
//! Bounded: every read and connect waits 3 s at most.

use serde_json::json;
use std::io::{BufRead, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(3);

fn kind(e: &std::io::Error) -> String {
    format!("{:?}", e.kind())
}

fn tcp(addr: SocketAddr, msg: &str) -> serde_json::Value {
    let mut s = match TcpStream::connect_timeout(&addr, WAIT) {
        Ok(s) => s,
        Err(e) => return json!({"error": kind(&e)}),
    };
    let peer = s.peer_addr().map(|p| p.to_string()).unwrap_or_default();
    s.set_read_timeout(Some(WAIT)).ok();
    if let Err(e) = s.write_all(msg.as_bytes()) {
        return json!({"peer": peer, "error": kind(&e)});
    }
    let mut buf = [0u8; 512];
    match s.read(&mut buf) {
        Ok(n) => json!({"peer": peer, "reply": String::from_utf8_lossy(&buf[..n])}),
        Err(e) => json!({"peer": peer, "error": kind(&e)}),
    }
}

fn udp(addr: SocketAddr, msg: &str, connected: bool) -> serde_json::Value {
    let any = if addr.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" };
    let s = match UdpSocket::bind(any) {
        Ok(s) => s,
        Err(e) => return json!({"error": kind(&e)}),
    };
    s.set_read_timeout(Some(WAIT)).ok();
    let sent = if connected {
        s.connect(addr).and_then(|()| s.send(msg.as_bytes()))
    } else {
        s.send_to(msg.as_bytes(), addr)
    };
    if let Err(e) = sent {
        return json!({"error": kind(&e)});
    }
    let peer = if connected {
        s.peer_addr().map(|p| p.to_string()).unwrap_or_default()
    } else {
        String::new()
    };
    let mut buf = [0u8; 512];
    match s.recv_from(&mut buf) {
        Ok((n, from)) => json!({"peer": peer, "from": from.to_string(), "reply": String::from_utf8_lossy(&buf[..n])}),
        Err(e) => json!({"peer": peer, "error": kind(&e)}),
    }
}

fn session(addr: SocketAddr) -> std::io::Result<()> {
    let mut s = TcpStream::connect_timeout(&addr, WAIT)?;
    s.set_read_timeout(Some(WAIT))?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", json!({"peer": s.peer_addr()?.to_string()}))?;
    out.flush()?;
    for line in std::io::stdin().lock().lines().take(100) {
        let line = line?;
        s.write_all(line.as_bytes())?;
        let mut buf = [0u8; 512];
        let v = match s.read(&mut buf) {
            Ok(n) => json!({"peer": s.peer_addr()?.to_string(), "reply": String::from_utf8_lossy(&buf[..n])}),
            Err(e) => json!({"error": kind(&e)}),
        };
        writeln!(out, "{v}")?;
        out.flush()?;
    }
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = || -> ! {
        eprintln!("usage: sock-client tcp|udp-connected|udp|tcp-session ADDR [MSG]");
        std::process::exit(2)
    };
    if args.len() < 3 {
        usage();
    }
    let addr: SocketAddr = args[2].parse().unwrap_or_else(|_| usage());
    let msg = args.get(3).map(String::as_str).unwrap_or("hello");
    let v = match args[1].as_str() {
        "tcp" => tcp(addr, msg),
        "udp-connected" => udp(addr, msg, true),
        "udp" => udp(addr, msg, false),
        "tcp-session" => {
            if let Err(e) = session(addr) {
                println!("{}", json!({"error": kind(&e)}));
            }
            return;
        }
        _ => usage(),
    };
    println!("{v}");
}
