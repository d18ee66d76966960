//! What the agent's tests share.

/// Root is needed to load the datapath. Without it the test reports a skip
/// (to `$SLUICE_SKIP_LOG` too, which the test script lists apart from
/// passes) and returns.
pub fn is_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!("SKIP {test}: needs root (BPF maps)");
        if let Ok(p) = std::env::var("SLUICE_SKIP_LOG") {
            use std::io::Write;
            if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(p) {
                let _ = writeln!(f, "{test}: needs root (BPF maps)");
            }
        }
    }
    root
}
