//! Inside a test's own network namespace (`sandbox_ports`): the loopback interface.

#![allow(unsafe_code)]

/// Brings `lo` up: a new network namespace starts with it down (connecting to 127.0.0.1 then
/// fails with ENETUNREACH).
pub fn loopback_up() {
    // SAFETY: a plain ioctl on a socket this function owns, with a zeroed ifreq naming "lo".
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (d, s) in ifr.ifr_name.iter_mut().zip(b"lo") {
            *d = *s as libc::c_char;
        }
        let got = libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut ifr);
        ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        let set = if got == 0 { libc::ioctl(fd, libc::SIOCSIFFLAGS, &ifr) } else { got };
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        assert_eq!(set, 0, "bringing lo up: {err}");
    }
}
