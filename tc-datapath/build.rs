//! Builds the eBPF object from `bpf/*.c` with clang (BPF target) and dumps
//! the C layouts of `bpf/layout.h` for the layout test. No prebuilt object
//! is checked in: what is tested is what this source compiles to.

use std::path::PathBuf;
use std::process::Command;

fn clang() -> String {
    std::env::var("SLUICE_CLANG").unwrap_or_else(|_| "clang-19".into())
}

fn run(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| {
        panic!(
            "{what}: cannot run {:?}: {e} (apt-get install clang-19 libbpf-dev)",
            cmd
        )
    });
    if !out.status.success() {
        panic!(
            "{what} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

// The crate's own hash, so that the value is the one the library would compute.
#[allow(dead_code)]
#[path = "src/hash.rs"]
mod hash;

fn main() {
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    // The whole directory: the programs, their headers under lib/, the layouts.
    println!("cargo:rerun-if-changed=bpf");
    println!("cargo:rerun-if-env-changed=SLUICE_CLANG");

    // The real build, and the upgrade test's (another layout version; see
    // SLUICE_LAYOUT_TEST_BUMP in bpf/layout.h), which only the test loads,
    // from OUT_DIR: it is not in the library.
    for (suffix, defines) in [("", &[][..]), ("-test-bump", &["-DSLUICE_LAYOUT_TEST_BUMP"][..])] {
        run(
            Command::new(clang())
                .args([
                    "-O2",
                    "-g",
                    "-target",
                    "bpf",
                    "-Wall",
                    "-Werror",
                    "-Wno-unused-parameter",
                ])
                .args(defines)
                .args(["-I/usr/include/x86_64-linux-gnu", "-c", "bpf/datapath.c", "-o"])
                .arg(out.join(format!("datapath{suffix}.o"))),
            "compiling bpf/datapath.c",
        );
        // The object's hash names its program version; hashing 600 KB at
        // every CNI call cost about 1 ms of each ADD.
        if suffix.is_empty() {
            let object = std::fs::read(out.join("datapath.o")).expect("read datapath.o");
            std::fs::write(
                out.join("object_hash.rs"),
                format!("const OBJECT_HASH: u64 = {:#x};\n", hash::fnv1a(0x51, &object)),
            )
            .expect("write object_hash.rs");
        }
        let dump = out.join(format!("layout_dump{suffix}"));
        run(
            Command::new(clang())
                .args(["-O0"])
                .args(defines)
                .args(["bpf/layout_dump.c", "-o"])
                .arg(&dump),
            "compiling bpf/layout_dump.c",
        );
        let desc = Command::new(&dump).arg("desc").output().expect("run layout_dump desc");
        assert!(desc.status.success(), "layout_dump desc failed");
        std::fs::write(out.join(format!("layout{suffix}.desc")), desc.stdout).expect("write the layout description");
        if suffix.is_empty() {
            let printed = Command::new(&dump).output().expect("run layout_dump");
            assert!(printed.status.success(), "layout_dump failed");
            std::fs::write(out.join("c_layout.rs"), printed.stdout).expect("write c_layout.rs");
        }
    }
}
