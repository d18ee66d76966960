//! `sluicectl observe`: the agent's flow events (its Unix socket, one JSON
//! object per line; see docs/agent.md), filtered here, printed as a table
//! or as the JSON lines themselves.

use anyhow::{Context, Result};
use clap::Args;
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

#[derive(Args)]
pub struct Observe {
    /// The agent's flow socket (its --flows-socket).
    #[arg(long, default_value = sluice_tc_datapath::maps::observe::DEFAULT_FLOWS_SOCKET)]
    socket: PathBuf,
    /// Keep printing flows as they come.
    #[arg(short, long)]
    follow: bool,
    /// Only the last N flows of the agent's backlog.
    #[arg(long)]
    last: Option<usize>,
    /// Flows to or from this pod ("namespace/name", or a name in any namespace).
    #[arg(long)]
    pod: Option<String>,
    /// Flows to or from pods of this namespace.
    #[arg(long)]
    namespace: Option<String>,
    /// forwarded, translated or dropped.
    #[arg(long)]
    verdict: Option<String>,
    /// tcp, udp, sctp, icmp, icmpv6.
    #[arg(long)]
    protocol: Option<String>,
    /// Flows with this port at either end.
    #[arg(long)]
    port: Option<u16>,
}

impl Observe {
    fn matches(&self, f: &Value) -> bool {
        let ends = [&f["source"], &f["destination"]];
        let pods: Vec<&str> = ends.iter().filter_map(|e| e["pod"].as_str()).collect();
        if let Some(p) = &self.pod {
            let hit = |pod: &&str| *pod == p || (!p.contains('/') && pod.rsplit('/').next() == Some(p.as_str()));
            if !pods.iter().any(hit) {
                return false;
            }
        }
        if let Some(ns) = &self.namespace
            && !pods.iter().any(|p| p.split('/').next() == Some(ns.as_str()))
        {
            return false;
        }
        if let Some(v) = &self.verdict
            && f["verdict"].as_str() != Some(v.as_str())
        {
            return false;
        }
        if let Some(p) = &self.protocol
            && f["protocol"].as_str() != Some(p.as_str())
        {
            return false;
        }
        if let Some(port) = self.port
            && !ends.iter().any(|e| e["port"].as_u64() == Some(u64::from(port)))
        {
            return false;
        }
        true
    }
}

/// "HH:MM:SS.mmm" (UTC) of a Unix time in nanoseconds.
fn clock(ns: u64) -> String {
    let ms = ns / 1_000_000;
    let s = ms / 1000;
    format!("{:02}:{:02}:{:02}.{:03}", s / 3600 % 24, s / 60 % 60, s % 60, ms % 1000)
}

fn end(e: &Value) -> String {
    let ip = e["ip"].as_str().unwrap_or("?");
    let port = e["port"].as_u64().unwrap_or(0);
    let addr = if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    };
    match e["pod"].as_str() {
        Some(p) => format!("{p} ({addr})"),
        None => addr,
    }
}

fn line(f: &Value) -> String {
    let mut extra = String::new();
    if let Some(b) = f["backend"].as_str() {
        extra = format!("  backend {b}");
    }
    if let Some(p) = f["policy"].as_str() {
        extra = format!("  policy {p}");
    }
    format!(
        "{}  {:<10} {:<20} {:<7} {:<5} {} -> {}{extra}",
        clock(f["timeUnixNs"].as_u64().unwrap_or(0)),
        f["verdict"].as_str().unwrap_or("?").to_uppercase(),
        f["reason"].as_str().unwrap_or("?"),
        f["direction"].as_str().unwrap_or("?"),
        f["protocol"].as_str().unwrap_or("?"),
        end(&f["source"]),
        end(&f["destination"]),
    )
}

pub fn run(o: &Observe, json: bool) -> Result<()> {
    let mut conn = UnixStream::connect(&o.socket).with_context(|| {
        format!(
            "connecting to {} (is sluice-agent running on this node, and is --socket its --flows-socket?)",
            o.socket.display()
        )
    })?;
    conn.write_all(format!("{{\"follow\": {}}}\n", o.follow).as_bytes())?;
    let out = std::io::stdout();
    let mut out = out.lock();
    let print = |out: &mut std::io::StdoutLock, raw: &str, f: &Value| -> Result<()> {
        if json {
            writeln!(out, "{}", raw.trim_end())?;
        } else {
            writeln!(out, "{}", line(f))?;
        }
        out.flush()?;
        Ok(())
    };
    let mut lines = BufReader::new(conn).lines();
    if !o.follow {
        // The backlog, then the agent closes: filter, keep the last N.
        let mut kept: Vec<(String, Value)> = Vec::new();
        for l in lines {
            let l = l?;
            let f: Value = serde_json::from_str(&l).with_context(|| format!("a flow line: {l}"))?;
            if o.matches(&f) {
                kept.push((l, f));
            }
        }
        let skip = o.last.map_or(0, |n| kept.len().saturating_sub(n));
        for (l, f) in &kept[skip..] {
            print(&mut out, l, f)?;
        }
        return Ok(());
    }
    while let Some(l) = lines.next().transpose()? {
        let f: Value = serde_json::from_str(&l).with_context(|| format!("a flow line: {l}"))?;
        if o.matches(&f) {
            print(&mut out, &l, &f)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        o: Observe,
    }

    #[test]
    fn filters_and_lines() {
        let f: Value = serde_json::json!({
            "timeUnixNs": 3_723_004_000_000u64, "verdict": "dropped", "reason": "drop-policy",
            "direction": "ingress", "protocol": "tcp",
            "source": {"ip": "10.244.1.5", "port": 40000, "pod": "demo/client"},
            "destination": {"ip": "10.244.2.7", "port": 8080, "pod": "shop/web-1"},
            "policy": "shop/web"});
        let o = |args: &[&str]| T::parse_from([&["t"], args].concat()).o;
        for (args, want) in [
            (&[][..], true),
            (&["--pod", "web-1"][..], true),
            (&["--pod", "shop/web-1"][..], true),
            (&["--pod", "demo/web-1"][..], false),
            (&["--namespace", "demo"][..], true),
            (&["--namespace", "kube-system"][..], false),
            (
                &["--verdict", "dropped", "--protocol", "tcp", "--port", "8080"][..],
                true,
            ),
            (&["--verdict", "forwarded"][..], false),
            (&["--port", "53"][..], false),
        ] {
            assert_eq!(o(args).matches(&f), want, "{args:?}");
        }
        assert_eq!(
            line(&f),
            "01:02:03.004  DROPPED    drop-policy          ingress tcp   demo/client (10.244.1.5:40000) -> shop/web-1 (10.244.2.7:8080)  policy shop/web"
        );
    }
}
