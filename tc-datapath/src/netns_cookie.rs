//! The cookie the kernel knows a network namespace by (`SO_NETNS_COOKIE`,
//! Linux 5.14): what the socket hooks compare a socket's namespace with and
//! what the source check holds a chained pod's sockets to.

use std::os::fd::AsRawFd;

use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};

/// The cookie of the calling thread's network namespace.
///
/// Read from a socket that is never bound: binding needs an address, and a
/// pod namespace the CNI binary enters may not have its loopback up yet.
/// A kernel without the option answers `ENOPROTOOPT`.
pub fn current() -> std::io::Result<u64> {
    let fd = socket(AddressFamily::Inet, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None)?;
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: a socket this function owns (closed when `fd` drops) and a
    // buffer of the option's size; the kernel writes at most `len` bytes.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &mut len,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cookie)
}

#[cfg(test)]
mod tests {
    use super::current;

    /// Two reads in one namespace agree, and a cookie is never 0 (0 is what
    /// the maps use for "no namespace").
    #[test]
    fn the_same_namespace_reads_the_same_cookie() {
        match current() {
            Ok(a) => {
                assert_ne!(a, 0);
                assert_eq!(current().unwrap(), a);
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOPROTOOPT) => {
                eprintln!("SKIP the_same_namespace_reads_the_same_cookie: no SO_NETNS_COOKIE on this kernel");
            }
            Err(e) => panic!("reading SO_NETNS_COOKIE: {e}"),
        }
    }
}
