//! What the benchmarks share: crafted frames and timed runs of the real
//! programs through BPF_PROG_TEST_RUN, and a TCP connect-request-response
//! load between two pods.

use crate::kube_proxy::Service;
use crate::netns::Netns;
use anyhow::{Context, Result, ensure};
use aya::programs::{SchedClassifier, TestRun, TestRunOptions};
use sluice_tc_datapath::checksum;
use sluice_tc_datapath::layout::PROTO_TCP as TCP;
use sluice_tc_datapath::maps::lb::{Algorithm, Backend, ServiceSpec};
use std::io::{Read, Write};
use std::net::IpAddr;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub const TC_ACT_OK: u32 = 0;
pub const TC_ACT_SHOT: u32 = 2;
pub const TC_ACT_REDIRECT: u32 = 7;

pub const SYN: u8 = 0x02;
pub const SYN_ACK: u8 = 0x12;
pub const ACK: u8 = 0x10;

const PROTO_TCP: u8 = 6;

/// The `p` quantile of `v` (sorts it).
pub fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// A seeded generator to scatter lookups over a table: xorshift64*. No
/// crate is needed for that, and the same seed gives the same draws in
/// every cell of a run.
pub struct Rng(pub u64);

impl Rng {
    pub fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n
    }
}

/// Ethernet + IPv4 + TCP (no options) with valid checksums.
pub fn tcp_frame(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 0x01, 0x02, 0, 0, 0, 0, 0x05, 0x08, 0x00];
    let mut ip = vec![0x45, 0, 0, 40, 0, 1, 0x40, 0, 64, PROTO_TCP, 0, 0];
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let c = checksum::of(&ip, 0);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let mut tcp = vec![0u8; 20];
    tcp[0..2].copy_from_slice(&sport.to_be_bytes());
    tcp[2..4].copy_from_slice(&dport.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = flags;
    tcp[14..16].copy_from_slice(&64240u16.to_be_bytes());
    let mut pseudo = ip[12..20].to_vec();
    pseudo.extend_from_slice(&[0, PROTO_TCP, 0, 20]);
    let c = checksum::of(&tcp, checksum::sum(&pseudo, 0));
    tcp[16..18].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&tcp);
    f
}

/// One run of `p` on `data`: (verdict, the kernel's timing of it in ns);
/// the frame as it leaves goes to `out`.
pub fn run(p: &SchedClassifier, data: &[u8], out: Option<&mut [u8]>) -> Result<(u32, f64)> {
    let r = p
        .test_run(TestRunOptions {
            data_in: Some(data),
            data_out: out,
            ..Default::default()
        })
        .context("BPF_PROG_TEST_RUN")?;
    Ok((r.return_value, r.duration.as_nanos() as f64))
}

/// Answers one request per connection on each port, then closes first
/// (so TIME_WAIT stays on the server, as with a real HTTP/1.0 server).
pub struct CrrServer {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl CrrServer {
    pub fn start(ns: &Netns, ports: &[u16]) -> Result<CrrServer> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for &port in ports {
            let l = ns.run(|| TcpListener::bind(("0.0.0.0", port)))??;
            l.set_nonblocking(true)?;
            for _ in 0..2 {
                let l = l.try_clone()?;
                let stop = stop.clone();
                threads.push(std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let mut pfd = libc::pollfd {
                            fd: l.as_raw_fd(),
                            events: libc::POLLIN,
                            revents: 0,
                        };
                        // SAFETY: one valid pollfd for the listener this thread holds.
                        if unsafe { libc::poll(&mut pfd, 1, 100) } <= 0 {
                            continue;
                        }
                        if let Ok((mut s, _)) = l.accept() {
                            let _ = s.set_nonblocking(false);
                            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                            let mut req = [0u8; 64];
                            if matches!(s.read(&mut req), Ok(n) if n > 0) {
                                let _ = s.write_all(b"ok\n");
                            }
                        }
                    }
                }));
            }
        }
        Ok(CrrServer { stop, threads })
    }
}

impl Drop for CrrServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn one_connection(to: SocketAddr) -> std::io::Result<()> {
    let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(1))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(1)))?;
    s.write_all(b"GET\n")?;
    let mut reply = Vec::with_capacity(8);
    s.read_to_end(&mut reply)?;
    if reply != b"ok\n" {
        return Err(std::io::Error::other("short reply"));
    }
    Ok(())
}

/// Connections per second from `ns` over `secs`, `workers` at a time, each
/// worker taking the addresses in `to` in turn: (rate, failed).
pub fn connection_rate(ns: &Netns, to: &[SocketAddr], secs: f64, workers: usize) -> Result<(f64, u64)> {
    let (ok, failed, took) = connections(ns, to, secs, workers)?;
    Ok((ok as f64 / took.as_secs_f64(), failed))
}

/// Connections made in about `secs` (ok, failed, time taken).
pub fn connections(ns: &Netns, to: &[SocketAddr], secs: f64, workers: usize) -> Result<(u64, u64, Duration)> {
    ns.run(|| connections_here(to, secs, workers))
}

/// Run the calling benchmark binary as one client process (its hidden
/// `--client TARGETS --seconds S --workers W` mode, which prints "ok failed
/// seconds") inside `netns` and, when given, `cgroup` (entered first, so
/// that its sockets are born there): (connections/s, failed). `label`
/// names the mode in errors.
pub fn client_process(
    label: &str,
    netns: &std::path::Path,
    cgroup: Option<&std::path::Path>,
    targets: &[SocketAddr],
    secs: f64,
    workers: usize,
) -> Result<(f64, u64)> {
    let me = std::env::current_exe()?;
    let targets: Vec<String> = targets.iter().map(|t| t.to_string()).collect();
    let script = match cgroup {
        Some(cg) => format!("echo $$ > '{}/cgroup.procs' && exec \"$@\"", cg.display()),
        None => "exec \"$@\"".to_string(),
    };
    let out = std::process::Command::new("sh")
        .args(["-c", &script, "client", "nsenter"])
        .arg(format!("--net={}", netns.display()))
        .arg("--")
        .arg(me)
        .args(["--client", &targets.join(","), "--seconds", &secs.to_string()])
        .args(["--workers", &workers.to_string()])
        .output()
        .context("starting a client")?;
    ensure!(
        out.status.success(),
        "{label} client: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let f: Vec<f64> = text.split_whitespace().filter_map(|w| w.parse().ok()).collect();
    ensure!(f.len() == 3, "{label} client said {text:?}");
    Ok((f[0] / f[2], f[1] as u64))
}

/// The same from the calling process's own namespace (a client process
/// started inside a namespace and cgroup).
pub fn connections_here(to: &[SocketAddr], secs: f64, workers: usize) -> (u64, u64, Duration) {
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let started = Instant::now();
    let counts: Vec<(u64, u64)> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..workers)
            .map(|_| {
                s.spawn(|| {
                    let (mut ok, mut failed) = (0u64, 0u64);
                    let mut next = to.iter().cycle();
                    while Instant::now() < deadline {
                        match one_connection(*next.next().expect("a target")) {
                            Ok(()) => ok += 1,
                            Err(_) => failed += 1,
                        }
                    }
                    (ok, failed)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().expect("client thread")).collect()
    });
    let ok: u64 = counts.iter().map(|c| c.0).sum();
    let failed: u64 = counts.iter().map(|c| c.1).sum();
    (ok, failed, started.elapsed())
}

/// Every thread of this process on the CPUs of `set`. Threads made later
/// take their maker's set, so the client threads a measurement starts and
/// the servers already running all end up there; the macvlan path between
/// two pods (the backlog the sender's CPU drains, in its softirq) runs
/// there too.
pub fn pin_process(set: &nix::sched::CpuSet) -> Result<()> {
    use nix::sched::sched_setaffinity;
    for task in std::fs::read_dir("/proc/self/task").context("listing this process's threads")? {
        let tid: i32 = task?.file_name().to_string_lossy().parse()?;
        // A thread that ended meanwhile is no longer there to pin.
        match sched_setaffinity(nix::unistd::Pid::from_raw(tid), set) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
            Err(e) => return Err(e).with_context(|| format!("pinning thread {tid}")),
        }
    }
    Ok(())
}

/// The highest-numbered CPU this process may run on: the one a pinned
/// measurement takes (the first CPUs are where a machine's interrupts and
/// housekeeping tend to land).
pub fn last_cpu() -> Result<usize> {
    let set = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)).context("reading this thread's CPUs")?;
    (0..nix::sched::CpuSet::count())
        .rev()
        .find(|&c| set.is_set(c).unwrap_or(false))
        .context("this thread may run on no CPU")
}

/// CPU `cpu`'s busy time so far (user, system, interrupts and softirqs:
/// neither idle and iowait nor the time the hypervisor took, steal), from
/// /proc/stat, in seconds.
pub fn cpu_busy_secs(cpu: usize) -> Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let name = format!("cpu{cpu}");
    let line = stat
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name.as_str()))
        .with_context(|| format!("no {name} in /proc/stat"))?;
    let f: Vec<u64> = line.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    ensure!(f.len() >= 8, "short {name} line in /proc/stat: {line}");
    // user nice system idle iowait irq softirq steal (guest time is in user).
    let busy = f[0] + f[1] + f[2] + f[5] + f[6];
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok(busy as f64 / hz)
}

/// Connections from `ns` to `to` for `secs` with this whole process on
/// `cpu` (see [`pin_process`]), then on the CPUs it had again: (µs of
/// that CPU's busy time per connection, the share of the pass the CPU was
/// busy). Every connection must succeed.
pub fn cpu_per_connection(ns: &Netns, to: &[SocketAddr], secs: f64, workers: usize, cpu: usize) -> Result<(f64, f64)> {
    use nix::sched::{CpuSet, sched_getaffinity};
    let was = sched_getaffinity(nix::unistd::Pid::from_raw(0)).context("reading this thread's CPUs")?;
    let mut one = CpuSet::new();
    one.set(cpu)?;
    pin_process(&one)?;
    let measured = (|| -> Result<(f64, f64)> {
        let before = cpu_busy_secs(cpu)?;
        let (ok, failed, took) = connections(ns, to, secs, workers)?;
        let busy = cpu_busy_secs(cpu)? - before;
        ensure!(failed == 0 && ok > 0, "{failed} failed connections, {ok} made");
        Ok((busy * 1e6 / ok as f64, busy / took.as_secs_f64()))
    })();
    pin_process(&was)?;
    measured
}

/// What `bench-datapath` prints (to stderr) after each pinned pass: the
/// mode, its CPU, the µs of CPU per connection, and the pass's span on the
/// clock `perf record -k CLOCK_MONOTONIC` stamps samples with (seconds).
/// `scripts/profile-datapath` cuts the profile by these lines.
pub fn cpu_pass_line(mode: &str, cpu: usize, us: f64, from: f64, to: f64) -> String {
    format!("cpu pass: {mode} on CPU {cpu}, {us:.1} µs per connection, CLOCK_MONOTONIC {from:.6},{to:.6}")
}

/// Root is needed for BPF_PROG_TEST_RUN and network namespaces.
/// The first line of a report: which benchmark, on what machine.
pub fn print_machine(bench: &str) {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!("sluice {bench} benchmark: Linux {}, {} CPUs", kernel.trim(), cpus());
    println!();
}

/// The CPUs this process may run on.
pub fn cpus() -> usize {
    std::thread::available_parallelism().map_or(0, |n| n.get())
}

pub fn require_root(bench: &str) -> Result<()> {
    anyhow::ensure!(
        nix::unistd::geteuid().is_root(),
        "{bench} needs root (BPF_PROG_TEST_RUN, network namespaces)"
    );
    Ok(())
}

/// Where the datapath's share of a connection goes, in real traffic: a
/// node's two programs, their runs per connection and time per run, from
/// the kernel's BPF run-time statistics. They cost two clock reads per run,
/// so a benchmark turns them on only for an extra pass, never in its timed
/// rounds.
pub struct ProgramTime {
    pub connections: u64,
    /// (runs per connection, ns per run) of egress, ingress.
    pub egress: (f64, f64),
    pub ingress: (f64, f64),
}

impl ProgramTime {
    /// Both programs' time per connection, µs.
    pub fn micros(&self) -> f64 {
        (self.egress.0 * self.egress.1 + self.ingress.0 * self.ingress.1) / 1000.0
    }
}

/// Connections from `ns` to `to` for `secs` on node `node` of `vpc`, with
/// the statistics on; every connection must succeed.
pub fn program_time(
    vpc: &crate::vpc::Vpc,
    node: usize,
    ns: &Netns,
    to: &[SocketAddr],
    secs: f64,
    workers: usize,
) -> Result<ProgramTime> {
    use sluice_tc_datapath::loader::{EGRESS, INGRESS};
    let progs = vpc.datapath_dir(node).join("progs");
    let version = crate::dir_names(&progs);
    anyhow::ensure!(version.len() == 1, "one program version pinned, found {version:?}");
    let dir = progs.join(&version[0]);
    let snapshot = || -> Result<[(u64, u64); 2]> {
        let mut out = [(0, 0); 2];
        for (i, name) in [EGRESS, INGRESS].iter().enumerate() {
            let info =
                aya::programs::ProgramInfo::from_pin(dir.join(name)).with_context(|| format!("pinned {name}"))?;
            out[i] = (info.run_time().as_nanos() as u64, info.run_count());
        }
        Ok(out)
    };
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).context("BPF_ENABLE_STATS")?;
    let before = snapshot()?;
    let (ok, failed, _) = connections(ns, to, secs, workers)?;
    let after = snapshot()?;
    anyhow::ensure!(failed == 0 && ok > 0, "{failed} failed connections");
    let per = |i: usize| {
        let (ns, runs) = (after[i].0 - before[i].0, after[i].1 - before[i].1);
        (runs as f64 / ok as f64, ns as f64 / runs.max(1) as f64)
    };
    Ok(ProgramTime {
        connections: ok,
        egress: per(0),
        ingress: per(1),
    })
}

/// Service `i` of the generated set: VIP 10.96.0.0 + i + 1, port 80/TCP,
/// 3 backends of its own (10.128.0.0 + 3i + j + 1, port 8080).
pub fn generated(i: usize) -> Service {
    let vip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 0)) + i as u32 + 1);
    let endpoints = (0..3)
        .map(|j| {
            let a = u32::from(Ipv4Addr::new(10, 128, 0, 0)) + 3 * i as u32 + j + 1;
            (Ipv4Addr::from(a), 8080)
        })
        .collect();
    Service {
        vip,
        port: 80,
        endpoints,
    }
}

/// The datapath form of service `i` (ids derived from the index: what an
/// agent with its allocator in memory writes).
pub fn spec(i: usize, s: &Service) -> ServiceSpec {
    ServiceSpec {
        vip: s.vip.into(),
        port: s.port,
        proto: TCP,
        rev_nat_id: i as u32 + 1,
        algorithm: Algorithm::Random,
        affinity_timeout_secs: 0,
        reject: false,
        node_address: false,
        scope: 0,
        source_ranges: false,
        node_denied: false,
        draining: Vec::new(),
        backends: s
            .endpoints
            .iter()
            .enumerate()
            .map(|(j, (a, p))| Backend {
                id: 3 * i as u32 + j as u32 + 1,
                addr: IpAddr::V4(*a),
                port: *p,
                active: true,
            })
            .collect(),
    }
}

pub fn exec_in(ns: &Netns, program: &str, args: &[&str], stdin: &[u8]) -> Result<Duration> {
    exec_within(ns, program, args, stdin, None)?.context("no time limit was set")
}

/// Run `program` in `ns` with `stdin`; `None` when it ran past `limit`
/// and was killed.
pub fn exec_within(
    ns: &Netns,
    program: &str,
    args: &[&str],
    stdin: &[u8],
    limit: Option<Duration>,
) -> Result<Option<Duration>> {
    let started = Instant::now();
    let mut child = ns
        .cmd(program)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("spawn {program}"))?;
    child.stdin.take().expect("piped").write_all(stdin)?;
    if let Some(limit) = limit {
        while child.try_wait()?.is_none() {
            if started.elapsed() > limit {
                let _ = child.kill();
                let _ = child.wait();
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let out = child.wait_with_output()?;
    let took = started.elapsed();
    ensure!(
        out.status.success(),
        "{program} {} in {}: {}",
        args.join(" "),
        ns.name,
        String::from_utf8_lossy(&out.stderr)
            .lines()
            .take(5)
            .collect::<Vec<_>>()
            .join("; ")
    );
    Ok(Some(took))
}

/// A pod config for connection-rate runs: the per-pod conntrack bound off.
/// One server pod here takes 15,000-25,000 new connections a second, and a
/// closed connection keeps its entry for the 10 s closing timeout, so its
/// live entries outgrow the default share (65,536) within seconds and new
/// connections would be dropped as `drop-ct-pod-limit`; nor does any agent
/// run here to recount the shares. docs/agent.md, "A full conntrack table".
pub fn for_connection_rates(mut conf: serde_json::Value) -> serde_json::Value {
    conf["datapath"]["ctPodLimit"] = serde_json::json!(0);
    conf
}

/// A `--tables` argument: the network's `datapath.tables` (JSON), checked
/// as the CNI binary checks it.
pub fn tables_arg(s: &str) -> Result<sluice_tc_datapath::config::TableSizes, String> {
    let cfg = sluice_tc_datapath::config::DatapathConfig {
        tables: serde_json::from_str(s).map_err(|e| e.to_string())?,
        ..Default::default()
    };
    cfg.validate().map_err(|e| e.to_string())?;
    Ok(cfg.tables)
}

/// The command line of the connection-rate benchmarks that compare
/// sluice's paths with kube-proxy's at several Service counts
/// (bench-socket, bench-nodeport).
#[derive(clap::Parser)]
pub struct CrrArgs {
    /// Service counts.
    #[arg(long, value_delimiter = ',', default_value = "1,10000,100000")]
    pub services: Vec<usize>,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 2.0)]
    pub seconds: f64,
    /// Rounds of every mode (the median is reported, with min-max).
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Client threads.
    #[arg(long, default_value_t = 4)]
    pub workers: usize,
    /// Seconds the nftables ruleset may take to load at one size.
    #[arg(long, default_value_t = 600)]
    pub load_budget: u64,
    /// Internal: be one client (comma-separated targets) in this process's
    /// namespace and print "ok failed seconds".
    #[arg(long, hide = true, value_delimiter = ',')]
    pub client: Option<Vec<SocketAddr>>,
}

impl CrrArgs {
    /// When this process is one of the benchmark's own clients
    /// (`client_process`): run it, print its counts, and say so.
    pub fn run_as_client(&self) -> bool {
        let Some(targets) = &self.client else {
            return false;
        };
        let (ok, failed, took) = connections_here(targets, self.seconds, self.workers);
        println!("{ok} {failed} {}", took.as_secs_f64());
        true
    }
}

/// The measured Service's VIP and its backend ports (on one server).
pub const CRR_VIP: Ipv4Addr = Ipv4Addr::new(10, 95, 0, 1);
pub const CRR_PORTS: [u16; 3] = [8080, 8081, 8082];

/// The backend ports of a server at `ip`.
pub fn crr_ports(ip: Ipv4Addr) -> Vec<SocketAddr> {
    CRR_PORTS
        .iter()
        .map(|p| SocketAddr::V4(std::net::SocketAddrV4::new(ip, *p)))
        .collect()
}

/// The Services at size `n`: the generated ones with the measured one
/// (`CRR_VIP`:80 over `server`'s ports) in the middle, and its index.
pub fn crr_services(n: usize, server: Ipv4Addr) -> (Vec<Service>, usize) {
    let mut v: Vec<Service> = (0..n.saturating_sub(1)).map(generated).collect();
    let at = v.len() / 2;
    v.insert(
        at,
        Service {
            vip: CRR_VIP,
            port: 80,
            endpoints: CRR_PORTS.iter().map(|p| (server, *p)).collect(),
        },
    );
    (v, at)
}
