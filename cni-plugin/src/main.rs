//! `sluice`: executed by the container runtime once per verb and pod.

fn main() {
    std::process::exit(sluice_cni_spec::skel::run(&sluice_cni::plugin::Sluice));
}
