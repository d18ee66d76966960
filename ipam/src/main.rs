//! `sluice-ipam`: the sluice allocator as a CNI IPAM plugin, for any plugin
//! that delegates IPAM through CNI_PATH.

fn main() {
    std::process::exit(sluice_cni_spec::skel::run(&sluice_ipam::cni::IpamPlugin));
}
