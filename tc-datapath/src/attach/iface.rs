//! The node's programs on one interface: attached as pinned TCX links (or
//! clsact filters where the kernel has no TCX), checked, moved to a new
//! version, removed.

use super::{
    AttachError, AttachMode, Attached, Hook, Node, ProgramRef, Side, TC_HANDLE, TC_PRIORITY, clsact, detach_hook,
    in_netns, io_err, link_err, prog_err, remove_link_pins, tcx_programs,
};
use aya::programs::links::{FdLink, LinkOrder, PinnedLink};
use aya::programs::tc::{SchedClassifierLink, TcAttachOptions};
use aya::programs::{ProgramError, SchedClassifier};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;
use tracing::info;

/// Why CHECK found an interface not running exactly the node's programs.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("the {side} link of {ifname} is not pinned at {}: {source}", .path.display())]
    NotPinned {
        side: &'static str,
        ifname: String,
        path: std::path::PathBuf,
        #[source]
        source: aya::programs::links::LinkError,
    },
    #[error("the pinned {side} link of {ifname} runs program {found} instead of sluice's {expected}")]
    WrongProgram {
        side: &'static str,
        ifname: String,
        found: u32,
        expected: u32,
    },
    #[error("{side} of {ifname} runs [{}], expected only sluice's {program} ({expected})", list(.found))]
    Foreign {
        side: &'static str,
        ifname: String,
        found: Vec<ProgramRef>,
        program: &'static str,
        expected: u32,
    },
    #[error(transparent)]
    Attach(#[from] AttachError),
}

fn list(progs: &[ProgramRef]) -> String {
    progs
        .iter()
        .map(|p| format!("{} ({})", p.id, p.name))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Errors that mean "this kernel has no TCX": the link type is unknown to it.
fn tcx_unsupported(e: &ProgramError) -> bool {
    if let ProgramError::SyscallError(s) = e {
        matches!(s.io_error.raw_os_error(), Some(libc::EINVAL | libc::EOPNOTSUPP | 524))
    } else {
        false
    }
}

impl AttachError {
    /// The kernel has no TCX (before 6.6): clsact filters are all there is.
    pub fn is_tcx_unsupported(&self) -> bool {
        matches!(self, AttachError::Program { source, .. } if tcx_unsupported(source))
    }
}

/// What `Node::promote` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Promotion {
    /// The pod runs TCX links now, and its filters are gone.
    Promoted,
    /// Its links were pinned already.
    Already,
    /// Its interface is not in its namespace (gone with the pod): nothing
    /// done. (Whether our filters are on it is not asked: a pod that lost
    /// them gets the links all the same, which CHECK then finds right.)
    NotAttached,
}

impl Node {
    /// Attach both programs to `ifname` in the namespace `netns`. A TCX
    /// link is pinned under `links/<key>`; a tc filter lives on the device.
    /// On failure nothing of this attachment is left.
    pub fn attach(
        &mut self,
        netns: BorrowedFd<'_>,
        ifname: &str,
        key: &str,
        mode: AttachMode,
    ) -> Result<Attached, AttachError> {
        self.attach_hook(Hook::Pod, netns, ifname, key, mode)
    }

    /// Attach the uplink programs to the node's interface `ifname` (in
    /// `netns`, the node's), pinned under `uplinks/<ifname>`.
    pub fn attach_uplink(
        &mut self,
        netns: BorrowedFd<'_>,
        ifname: &str,
        mode: AttachMode,
    ) -> Result<Attached, AttachError> {
        self.attach_hook(Hook::Uplink, netns, ifname, ifname, mode)
    }

    fn attach_hook(
        &mut self,
        hook: Hook,
        netns: BorrowedFd<'_>,
        ifname: &str,
        key: &str,
        mode: AttachMode,
    ) -> Result<Attached, AttachError> {
        let link_dir = self.dir().join(hook.dir()).join(key);
        // A repeated ADD replaces what an earlier one left.
        remove_link_pins(&link_dir)?;
        let r = if mode == AttachMode::Tc {
            self.attach_clsact(hook, netns, ifname).map(|()| Attached::Tc)
        } else {
            self.attach_tcx_or_clsact(hook, netns, ifname, &link_dir, mode)
        };
        if r.is_err() {
            let _ = detach_hook(hook, self.dir(), Some(netns), ifname, key);
        }
        r
    }

    /// TCX links on both sides; with `auto` on a kernel without TCX, clsact
    /// filters instead.
    fn attach_tcx_or_clsact(
        &mut self,
        hook: Hook,
        netns: BorrowedFd<'_>,
        ifname: &str,
        link_dir: &Path,
        mode: AttachMode,
    ) -> Result<Attached, AttachError> {
        let (egress, ingress) = self.programs(hook)?;
        let fell_back = in_netns(netns, move || {
            for (prog, side) in [(egress, Side::Egress), (ingress, Side::Ingress)] {
                match attach_tcx(prog, ifname, side, link_dir) {
                    Ok(()) => {}
                    Err(AttachError::Program { source, .. })
                        if mode == AttachMode::Auto && side == Side::Egress && tcx_unsupported(&source) =>
                    {
                        info!(ifname, error = %source, "no TCX on this kernel; attaching with clsact");
                        return Ok(true);
                    }
                    Err(e) => return Err(e),
                }
            }
            Ok(false)
        })??;
        if fell_back {
            self.attach_clsact(hook, netns, ifname)?;
            return Ok(Attached::Tc);
        }
        Ok(Attached::Tcx)
    }

    /// `hook`'s programs as cls_bpf filters on `ifname`, from their pins
    /// (see `clsact`), from a thread in `netns`.
    fn attach_clsact(&self, hook: Hook, netns: BorrowedFd<'_>, ifname: &str) -> Result<(), AttachError> {
        let progs = self.clsact_programs_of(hook)?;
        let filters = progs.filters();
        in_netns(netns, || {
            clsact::attach(ifname, TC_PRIORITY, TC_HANDLE.into(), &filters)
        })?
    }

    fn clsact_programs_of(&self, hook: Hook) -> Result<ClsactPrograms, AttachError> {
        let mut fds = Vec::new();
        for side in Side::BOTH {
            let pin = self.program_pin(hook, side);
            let fd = clsact::pinned_fd(&pin).map_err(io_err("opening the program pinned at", &pin))?;
            fds.push((side, hook.program(side), fd));
        }
        Ok(ClsactPrograms { fds })
    }

    /// The pod programs as clsact filters for a caller that sends the
    /// messages over an rtnetlink socket of its own in the pod's namespace
    /// (ADD has one open: no thread needs to enter the namespace). TCX link
    /// pins an earlier ADD of `key` left are removed first, as `attach`
    /// does; on failure, `detach` takes back what was made.
    pub fn clsact_programs(&self, key: &str) -> Result<ClsactPrograms, AttachError> {
        remove_link_pins(&self.dir().join(Hook::Pod.dir()).join(key))?;
        self.clsact_programs_of(Hook::Pod)
    }

    /// The pod attachment `key` has its TCX links pinned (both sides).
    pub fn has_links(&self, key: &str) -> bool {
        super::has_links(self.dir(), key)
    }

    /// Move a pod attached with clsact filters onto TCX links, pinned under
    /// `links/<key>`, then take its filters off. The links cost two RCU
    /// grace periods under RTNL, which is why ADD attaches filters and this
    /// runs later, off the pod's start. A TCX program ends the packet's way
    /// at its hook (ours never return TCX_NEXT), so from a side's link on,
    /// its filter no longer runs: a packet meets one program, never both,
    /// and no connection notices. Open the node with `open_exclusive`, so
    /// that no DEL takes the pod meanwhile. On failure the filters stay.
    pub fn promote(&mut self, netns: BorrowedFd<'_>, ifname: &str, key: &str) -> Result<Promotion, AttachError> {
        if self.has_links(key) {
            return Ok(Promotion::Already);
        }
        let link_dir = self.dir().join(Hook::Pod.dir()).join(key);
        let (egress, ingress) = self.programs(Hook::Pod)?;
        let dir = link_dir.as_path();
        let r = in_netns(netns, move || {
            for side in Side::BOTH {
                // A handle on the filter, made from the interface's name
                // alone (aya does not ask the kernel whether it is there);
                // dropped, it would delete the filter.
                match SchedClassifierLink::attached(ifname, side.tc_type(), TC_PRIORITY, TC_HANDLE, None) {
                    Ok(l) => std::mem::forget(l),
                    Err(_) => return Ok(Promotion::NotAttached),
                }
            }
            attach_tcx(egress, ifname, Side::Egress, dir)?;
            attach_tcx(ingress, ifname, Side::Ingress, dir)?;
            for side in Side::BOTH {
                if let Ok(l) = SchedClassifierLink::attached(ifname, side.tc_type(), TC_PRIORITY, TC_HANDLE, None) {
                    drop(l);
                }
            }
            Ok(Promotion::Promoted)
        })
        .and_then(|r| r);
        if r.is_err() {
            let _ = remove_link_pins(&link_dir);
        }
        r
    }

    /// CHECK: `ifname` in `netns` runs exactly this node's programs, on both
    /// sides. A pod with NET_ADMIN can detach them or put its own first.
    /// (cls_bpf filters are checked by the caller, which speaks rtnetlink.)
    pub fn check(
        &mut self,
        netns: BorrowedFd<'_>,
        ifname: &str,
        key: &str,
        attached: Attached,
    ) -> Result<(), CheckError> {
        self.check_hook(Hook::Pod, netns, ifname, key, attached)
    }

    /// The same for either hook (an uplink's key is its name).
    pub fn check_hook(
        &mut self,
        hook: Hook,
        netns: BorrowedFd<'_>,
        ifname: &str,
        key: &str,
        attached: Attached,
    ) -> Result<(), CheckError> {
        if attached == Attached::Tc {
            return Ok(());
        }
        let (egress_id, ingress_id) = self.hook_program_ids(hook)?;
        for (side, id) in [(Side::Egress, egress_id), (Side::Ingress, ingress_id)] {
            let program = hook.program(side);
            let path = self.dir().join(hook.dir()).join(key).join(side.name());
            let pinned = PinnedLink::from_pin(&path).map_err(|source| CheckError::NotPinned {
                side: side.name(),
                ifname: ifname.into(),
                path: path.clone(),
                source,
            })?;
            let info = FdLink::from(pinned)
                .info()
                .map_err(link_err(format!("info of link {}", path.display())))?;
            if info.program_id() != id {
                return Err(CheckError::WrongProgram {
                    side: side.name(),
                    ifname: ifname.into(),
                    found: info.program_id(),
                    expected: id,
                });
            }
            let found = tcx_programs(netns, ifname, side)?;
            if found.len() != 1 || found[0].id != id {
                return Err(CheckError::Foreign {
                    side: side.name(),
                    ifname: ifname.into(),
                    found,
                    program,
                    expected: id,
                });
            }
        }
        Ok(())
    }

    /// Re-attach a tc-mode interface onto this version (TCX links move by
    /// themselves in `open`; filters live on devices the pins do not name).
    pub fn reattach_tc(&mut self, netns: BorrowedFd<'_>, ifname: &str) -> Result<(), AttachError> {
        self.reattach_tc_hook(Hook::Pod, netns, ifname)
    }

    pub fn reattach_tc_hook(&mut self, hook: Hook, netns: BorrowedFd<'_>, ifname: &str) -> Result<(), AttachError> {
        self.attach_clsact(hook, netns, ifname)
    }
}

/// A hook's programs, opened from their pins, to attach as clsact filters.
pub struct ClsactPrograms {
    fds: Vec<(Side, &'static str, std::os::fd::OwnedFd)>,
}

impl ClsactPrograms {
    fn filters(&self) -> Vec<clsact::Filter<'_>> {
        self.fds
            .iter()
            .map(|(side, name, fd)| clsact::Filter {
                side: *side,
                prog: fd.as_fd(),
                name,
            })
            .collect()
    }

    /// The rtnetlink messages, with their flags (send each with
    /// `NLM_F_REQUEST | NLM_F_ACK` added), for the interface `index`.
    pub fn requests(&self, index: u32) -> Vec<(netlink_packet_route::RouteNetlinkMessage, u16)> {
        clsact::requests(index, TC_PRIORITY, TC_HANDLE.into(), &self.filters())
    }

    /// The outcome, from each answer's errno (0 for an ACK) in order.
    pub fn judge(&self, ifname: &str, errnos: &[i32]) -> Result<(), AttachError> {
        clsact::judge(ifname, &self.filters(), errnos)
    }
}

/// One TCX link, pinned under `link_dir`.
fn attach_tcx(prog: &mut SchedClassifier, ifname: &str, side: Side, link_dir: &Path) -> Result<(), AttachError> {
    let id = prog
        .attach_with_options(ifname, side.tc_type(), TcAttachOptions::TcxOrder(LinkOrder::default()))
        .map_err(prog_err(format!("attaching {} TCX link to {ifname}", side.name())))?;
    std::fs::create_dir_all(link_dir).map_err(io_err("creating", link_dir))?;
    let link = prog.take_link(id).map_err(prog_err("taking the TCX link"))?;
    let fd = FdLink::try_from(link).map_err(link_err(format!("TCX link on {ifname}")))?;
    fd.pin(link_dir.join(side.name()))
        .map_err(|source| AttachError::Pinning {
            what: format!("pinning {} link in {}", side.name(), link_dir.display()),
            source,
        })?;
    Ok(())
}
