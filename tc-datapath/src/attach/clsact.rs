//! cls_bpf filters under clsact, attached from the programs' pins: the
//! clsact qdisc and both filters as three rtnetlink messages, all sent
//! before the first answer, either by the caller over a socket it has in
//! the interface's namespace (ADD) or here from a thread in it.
//!
//! aya attaches a filter from a `SchedClassifier`, and opening one from a
//! pin makes aya detect the kernel's features first (`ProgramInfo::
//! name_as_str` consults them before the name): 17 `bpf()` calls, ~0.4 ms,
//! in every process that does it, so in every CNI ADD. It also opens a
//! netlink socket per qdisc and per filter. Neither is needed to hand the
//! kernel a program fd, so ADD does it here; everything that needs the
//! programs themselves (TCX links, their ids for CHECK) still uses aya.

use super::{AttachError, Side};
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::tc::{TcAttribute, TcBpfFlags, TcFilterBpfOption, TcHandle, TcMessage, TcOption};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};
use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// The first fields of `union bpf_attr`, as BPF_OBJ_GET reads them. The
/// kernel reads the size it is given and wants every byte past the fields
/// it knows zero, so the struct's tail padding is not passed.
#[repr(C)]
struct ObjGet {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
}

/// How much of `ObjGet` the kernel is handed: up to `path_fd`'s end.
const OBJ_GET_SIZE: usize = std::mem::offset_of!(ObjGet, path_fd) + size_of::<i32>();

/// A program (or any object) pinned at `path`: `BPF_OBJ_GET`.
pub(super) fn pinned_fd(path: &Path) -> io::Result<OwnedFd> {
    const BPF_OBJ_GET: libc::c_long = 7;
    let path_c =
        CString::new(path.as_os_str().as_bytes()).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let attr = ObjGet {
        pathname: path_c.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
        path_fd: 0,
    };
    // SAFETY: `attr` is a valid BPF_OBJ_GET attribute of OBJ_GET_SIZE bytes whose
    // path outlives the call; the result is a new fd we own, or -1.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_OBJ_GET, &attr as *const ObjGet, OBJ_GET_SIZE) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd to us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// One program for one side: its fd and the name the filter shows.
pub struct Filter<'a> {
    pub side: Side,
    pub prog: BorrowedFd<'a>,
    pub name: &'a str,
}

/// The messages that add clsact to the interface `index` and `filters`
/// under it at `priority`/`handle`, replacing filters already there, each
/// with its netlink flags; for a socket in the interface's namespace.
/// `judge` reads the answers.
pub fn requests(index: u32, priority: u16, handle: u32, filters: &[Filter<'_>]) -> Vec<(RouteNetlinkMessage, u16)> {
    let index = index as i32;
    let mut qdisc = TcMessage::default();
    qdisc.header.index = index;
    qdisc.header.parent = TcHandle::CLSACT;
    qdisc.header.handle = TcHandle {
        major: 0xffff,
        minor: 0,
    };
    qdisc.attributes.push(TcAttribute::Kind("clsact".into()));
    let mut msgs = vec![(
        RouteNetlinkMessage::NewQueueDiscipline(qdisc),
        NLM_F_CREATE | NLM_F_EXCL,
    )];
    for f in filters {
        let mut m = TcMessage::default();
        m.header.index = index;
        m.header.handle = TcHandle::from(handle);
        m.header.parent = TcHandle {
            major: 0xffff,
            minor: match f.side {
                Side::Egress => TcHandle::MIN_EGRESS,
                Side::Ingress => TcHandle::MIN_INGRESS,
            },
        };
        // Priority in the upper half, the protocol (ETH_P_ALL, network
        // order) in the lower: every frame.
        m.header.info = (u32::from(priority) << 16) | u32::from((libc::ETH_P_ALL as u16).to_be());
        m.attributes.push(TcAttribute::Kind("bpf".into()));
        m.attributes.push(TcAttribute::Options(vec![
            TcOption::Bpf(TcFilterBpfOption::ProgFd(f.prog.as_raw_fd() as u32)),
            TcOption::Bpf(TcFilterBpfOption::ProgName(f.name.into())),
            TcOption::Bpf(TcFilterBpfOption::Flags(TcBpfFlags::DirectAction)),
        ]));
        // CREATE without EXCL: a filter at this priority and handle is
        // replaced in place, no moment without one.
        msgs.push((RouteNetlinkMessage::NewTrafficFilter(m), NLM_F_CREATE));
    }
    msgs
}

/// The outcome of `requests`, from the errno of each answer (0 for an
/// ACK), in order: clsact being there already is fine.
pub fn judge(ifname: &str, filters: &[Filter<'_>], errnos: &[i32]) -> Result<(), AttachError> {
    for (i, &errno) in errnos.iter().enumerate() {
        if errno == 0 || (i == 0 && errno == libc::EEXIST) {
            continue;
        }
        let what = match i {
            0 => "adding clsact to".to_string(),
            i => format!("adding the {} filter to", filters[i - 1].side.name()),
        };
        return Err(AttachError::Clsact {
            what,
            ifname: ifname.to_string(),
            source: io::Error::from_raw_os_error(errno),
        });
    }
    Ok(())
}

/// `requests` and `judge` over a socket of our own, from the calling
/// thread (which is in `ifname`'s namespace).
pub(super) fn attach(ifname: &str, priority: u16, handle: u32, filters: &[Filter<'_>]) -> Result<(), AttachError> {
    let err = |what: &str| {
        let what = what.to_string();
        move |source: io::Error| AttachError::Clsact {
            what,
            ifname: ifname.to_string(),
            source,
        }
    };
    let index = nix::net::if_::if_nametoindex(ifname)
        .map_err(io::Error::from)
        .map_err(err("finding"))?;
    let mut sock = Socket::new(NETLINK_ROUTE).map_err(err("opening rtnetlink for"))?;
    sock.bind_auto().map_err(err("binding rtnetlink for"))?;
    sock.connect(&SocketAddr::new(0, 0))
        .map_err(err("connecting rtnetlink for"))?;
    let msgs = requests(index, priority, handle, filters);
    let want = msgs.len();
    let mut buf = Vec::new();
    for (seq, (inner, flags)) in msgs.into_iter().enumerate() {
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        header.sequence_number = seq as u32 + 1;
        let mut msg = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(inner));
        msg.finalize();
        let at = buf.len();
        buf.resize(at + msg.buffer_len(), 0);
        msg.serialize(&mut buf[at..]);
    }
    sock.send(&buf, 0).map_err(err("sending the filters of"))?;

    // One answer per message, in order.
    let mut errnos = Vec::with_capacity(want);
    let mut rx = vec![0u8; 8192];
    while errnos.len() < want {
        let n = sock
            .recv(&mut &mut rx[..], 0)
            .map_err(err("reading the answers about"))?;
        let mut off = 0;
        while off < n {
            let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&rx[off..n])
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
                .map_err(err("parsing the answers about"))?;
            if let NetlinkPayload::Error(e) = &msg.payload {
                errnos.push(-e.raw_code());
            }
            let len = msg.header.length as usize;
            if len == 0 {
                break;
            }
            off += len.next_multiple_of(4);
        }
    }
    judge(ifname, filters, &errnos)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn obj_get_matches_the_kernels_bpf_attr() {
        // include/uapi/linux/bpf.h, the BPF_OBJ_* member of union bpf_attr.
        assert_eq!(std::mem::offset_of!(ObjGet, pathname), 0);
        assert_eq!(std::mem::offset_of!(ObjGet, bpf_fd), 8);
        assert_eq!(std::mem::offset_of!(ObjGet, file_flags), 12);
        assert_eq!(std::mem::offset_of!(ObjGet, path_fd), 16);
        assert_eq!(OBJ_GET_SIZE, 20);
    }

    #[test]
    fn a_missing_pin_is_enoent() {
        if !crate::root_or_skip("a_missing_pin_is_enoent", "bpf() needs root") {
            return;
        }
        let e = pinned_fd(Path::new("/nonexistent/sluice-pin")).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT), "{e}");
    }

    fn filters(fd: &OwnedFd) -> Vec<Filter<'_>> {
        [Side::Egress, Side::Ingress]
            .into_iter()
            .map(|side| Filter {
                side,
                prog: fd.as_fd(),
                name: side.name(),
            })
            .collect()
    }

    #[test]
    fn requests_add_clsact_then_replace_each_filter() {
        let fd: OwnedFd = std::fs::File::open("/dev/null").unwrap().into();
        let msgs = requests(7, 1, 0x5c1, &filters(&fd));
        assert_eq!(msgs.len(), 3);
        let RouteNetlinkMessage::NewQueueDiscipline(q) = &msgs[0].0 else {
            panic!("{:?}", msgs[0].0)
        };
        assert_eq!((q.header.index, u32::from(q.header.parent)), (7, 0xffff_fff1));
        assert!(q.attributes.contains(&TcAttribute::Kind("clsact".into())));
        assert_eq!(msgs[0].1, NLM_F_CREATE | NLM_F_EXCL, "clsact is made once");
        for ((m, flags), minor) in msgs[1..].iter().zip([TcHandle::MIN_EGRESS, TcHandle::MIN_INGRESS]) {
            let RouteNetlinkMessage::NewTrafficFilter(f) = m else {
                panic!("{m:?}")
            };
            assert_eq!(u32::from(f.header.parent), 0xffff_0000 | u32::from(minor));
            assert_eq!(u32::from(f.header.handle), 0x5c1);
            assert_eq!(
                f.header.info,
                (1 << 16) | 0x0300,
                "priority 1, ETH_P_ALL in network order"
            );
            assert_eq!(*flags, NLM_F_CREATE, "no EXCL: an existing filter is replaced");
            let Some(TcAttribute::Options(o)) = f.attributes.iter().find(|a| matches!(a, TcAttribute::Options(_)))
            else {
                panic!("no options")
            };
            assert!(o.contains(&TcOption::Bpf(TcFilterBpfOption::ProgFd(fd.as_raw_fd() as u32))));
            assert!(o.contains(&TcOption::Bpf(TcFilterBpfOption::Flags(TcBpfFlags::DirectAction))));
        }
    }

    #[test]
    fn judge_takes_an_existing_clsact_but_no_failed_filter() {
        let fd: OwnedFd = std::fs::File::open("/dev/null").unwrap().into();
        let f = filters(&fd);
        assert!(judge("eth0", &f, &[0, 0, 0]).is_ok());
        assert!(judge("eth0", &f, &[libc::EEXIST, 0, 0]).is_ok());
        let e = judge("eth0", &f, &[0, 0, libc::EINVAL]).unwrap_err().to_string();
        assert!(e.contains("ingress filter") && e.contains("eth0"), "{e}");
        let e = judge("eth0", &f, &[libc::EPERM, 0, 0]).unwrap_err().to_string();
        assert!(e.contains("clsact"), "{e}");
        assert!(
            judge("eth0", &f, &[0, libc::EEXIST, 0]).is_err(),
            "EEXIST of a filter is an error"
        );
    }
}
