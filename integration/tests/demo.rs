//! The README's first command: the demo runs to its end, shows the Service
//! answered by both web pods, the policy drop as a flow event and in the
//! metrics, and leaves nothing behind (it checks that itself and fails
//! otherwise).

use sluice_integration::{bin_dir, require_root};

#[test]
fn the_demo_runs() {
    if !require_root("the_demo_runs") {
        return;
    }
    let out = std::process::Command::new(bin_dir().join("sluice-demo"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    let answered = text
        .lines()
        .find(|l| l.contains("answered by"))
        .expect("the Service line");
    assert!(answered.contains("web-1") && answered.contains("web-2"), "{answered}");
    assert!(
        text.lines()
            .any(|l| l.contains("DROPPED") && l.contains("drop-policy") && l.contains("shop/intruder")),
        "{text}"
    );
    assert!(
        text.contains(r#"sluice_datapath_packets_total{reason="drop-policy",direction="ingress"}"#),
        "{text}"
    );
    assert!(text.contains("pod links left 0, IPAM leases left 0"), "{text}");
}
