//! Interface configuration by ioctl, in the calling thread's namespace.

use super::NetnsError;
use crate::wire::Mac;
use std::ffi::CString;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// A control socket in the current namespace.
fn control_socket() -> Result<OwnedFd, NetnsError> {
    // SAFETY: plain socket(2); the fd is owned right away.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(os_err("open a control socket"));
    }
    // SAFETY: fd is a fresh, valid descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn os_err(what: &str) -> NetnsError {
    NetnsError::Config(format!(
        "cannot {what}: {}",
        std::io::Error::last_os_error()
    ))
}

/// Refuses what the kernel would not take as an interface name.
pub fn check_ifname(name: &str) -> Result<(), NetnsError> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains(['/', ' ', '\0']) {
        return Err(NetnsError::Config(format!(
            "invalid interface name '{name}': 1 to 15 characters, no '/' or spaces"
        )));
    }
    Ok(())
}

fn ifreq_for(name: &str) -> Result<libc::ifreq, NetnsError> {
    check_ifname(name)?;
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    Ok(req)
}

fn ioctl(
    sock: &OwnedFd,
    op: libc::Ioctl,
    arg: *mut libc::c_void,
    what: &str,
) -> Result<(), NetnsError> {
    // SAFETY: `arg` points to a struct of the type `op` expects, alive for the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), op, arg) } < 0 {
        return Err(os_err(what));
    }
    Ok(())
}

fn sockaddr_in(ip: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(ip.octets()),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size; this is the
    // documented way to pass an IPv4 address through `struct sockaddr`.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

/// True if an interface of that name exists in this namespace.
pub fn link_exists(name: &str) -> bool {
    let Ok(c) = CString::new(name) else {
        return false;
    };
    // SAFETY: c is a valid NUL-terminated string.
    unsafe { libc::if_nametoindex(c.as_ptr()) != 0 }
}

/// `ip link set NAME up`
pub fn link_set_up(name: &str) -> Result<(), NetnsError> {
    let sock = control_socket()?;
    let mut req = ifreq_for(name)?;
    ioctl(
        &sock,
        libc::SIOCGIFFLAGS,
        &mut req as *mut _ as *mut _,
        &format!("read the flags of {name}"),
    )?;
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    ioctl(
        &sock,
        libc::SIOCSIFFLAGS,
        &mut req as *mut _ as *mut _,
        &format!("set {name} up"),
    )
}

/// `ip link set NAME mtu MTU`
pub fn link_set_mtu(name: &str, mtu: u32) -> Result<(), NetnsError> {
    let sock = control_socket()?;
    let mut req = ifreq_for(name)?;
    req.ifr_ifru.ifru_mtu = mtu as libc::c_int;
    ioctl(
        &sock,
        libc::SIOCSIFMTU,
        &mut req as *mut _ as *mut _,
        &format!("set the MTU of {name} to {mtu}"),
    )
}

/// `ip link set NAME address MAC`
pub fn link_set_mac(name: &str, mac: Mac) -> Result<(), NetnsError> {
    let sock = control_socket()?;
    let mut req = ifreq_for(name)?;
    // SAFETY: zeroed sockaddr is valid; we fill family and the first 6 bytes.
    let mut sa: libc::sockaddr = unsafe { std::mem::zeroed() };
    sa.sa_family = libc::ARPHRD_ETHER;
    for (d, s) in sa.sa_data.iter_mut().zip(mac.0) {
        *d = s as libc::c_char;
    }
    req.ifr_ifru.ifru_hwaddr = sa;
    ioctl(
        &sock,
        libc::SIOCSIFHWADDR,
        &mut req as *mut _ as *mut _,
        &format!("set the MAC of {name}"),
    )
}

/// `ip addr add IP/PREFIX dev NAME`
pub fn addr_add(name: &str, ip: Ipv4Addr, prefix_len: u8) -> Result<(), NetnsError> {
    let sock = control_socket()?;
    let mut req = ifreq_for(name)?;
    req.ifr_ifru.ifru_addr = sockaddr_in(ip);
    ioctl(
        &sock,
        libc::SIOCSIFADDR,
        &mut req as *mut _ as *mut _,
        &format!("add {ip} to {name}"),
    )?;
    let mask = if prefix_len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix_len.min(32)))
    };
    req.ifr_ifru.ifru_netmask = sockaddr_in(Ipv4Addr::from(mask));
    ioctl(
        &sock,
        libc::SIOCSIFNETMASK,
        &mut req as *mut _ as *mut _,
        &format!("set the netmask of {name}"),
    )
}

/// `struct rtentry` from <net/route.h>, which the libc crate lacks for glibc.
#[repr(C)]
struct RtEntry {
    rt_pad1: libc::c_ulong,
    rt_dst: libc::sockaddr,
    rt_gateway: libc::sockaddr,
    rt_genmask: libc::sockaddr,
    rt_flags: libc::c_ushort,
    rt_pad2: libc::c_short,
    rt_pad3: libc::c_ulong,
    rt_pad4: *mut libc::c_void,
    rt_metric: libc::c_short,
    rt_dev: *mut libc::c_char,
    rt_mtu: libc::c_ulong,
    rt_window: libc::c_ulong,
    rt_irtt: libc::c_ushort,
}

/// `ip route add default via GATEWAY dev NAME`
pub fn route_add_default(name: &str, gateway: Ipv4Addr) -> Result<(), NetnsError> {
    let sock = control_socket()?;
    let dev = CString::new(name)
        .map_err(|_| NetnsError::Config(format!("invalid interface name '{name}'")))?;
    let mut rt = RtEntry {
        rt_pad1: 0,
        rt_dst: sockaddr_in(Ipv4Addr::UNSPECIFIED),
        rt_gateway: sockaddr_in(gateway),
        rt_genmask: sockaddr_in(Ipv4Addr::UNSPECIFIED),
        rt_flags: (libc::RTF_UP | libc::RTF_GATEWAY) as libc::c_ushort,
        rt_pad2: 0,
        rt_pad3: 0,
        rt_pad4: std::ptr::null_mut(),
        rt_metric: 0,
        rt_dev: dev.as_ptr() as *mut libc::c_char,
        rt_mtu: 0,
        rt_window: 0,
        rt_irtt: 0,
    };
    ioctl(
        &sock,
        libc::SIOCADDRT,
        &mut rt as *mut _ as *mut _,
        &format!("add a default route via {gateway} on {name}"),
    )
}

/// One IPv4 address of an interface of this namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceAddress {
    pub interface: String,
    pub address: Ipv4Addr,
    /// The length of its network prefix (32 when the kernel gives no mask).
    pub prefix_len: u8,
}

/// Every IPv4 address of this namespace's interfaces; `None` if the kernel
/// cannot list them now.
pub fn ipv4_addresses() -> Option<Vec<InterfaceAddress>> {
    let mut ifap: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills a list we free below.
    if unsafe { libc::getifaddrs(&mut ifap) } != 0 {
        return None;
    }
    let v4 = |sa: *mut libc::sockaddr| {
        // SAFETY: a non-null sockaddr of a node of the list; its family
        // says whether it is a sockaddr_in.
        (!sa.is_null() && i32::from(unsafe { (*sa).sa_family }) == libc::AF_INET).then(|| {
            // SAFETY: as above, an AF_INET sockaddr is a sockaddr_in.
            let sin = unsafe { &*(sa as *const libc::sockaddr_in) };
            Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr))
        })
    };
    let mut found = Vec::new();
    let mut cur = ifap;
    while !cur.is_null() {
        // SAFETY: cur is a node of the list getifaddrs returned.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        let Some(address) = v4(ifa.ifa_addr) else {
            continue;
        };
        if ifa.ifa_name.is_null() {
            continue;
        }
        // SAFETY: ifa_name is a NUL-terminated string owned by the list.
        let interface = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) }
            .to_string_lossy()
            .into_owned();
        let prefix_len = v4(ifa.ifa_netmask).map_or(32, |m| u32::from(m).count_ones() as u8);
        found.push(InterfaceAddress {
            interface,
            address,
            prefix_len,
        });
    }
    // SAFETY: freeing the list we got, once.
    unsafe { libc::freeifaddrs(ifap) };
    Some(found)
}

/// The interface address `ip`, if an interface of this namespace holds it.
pub fn address(ip: Ipv4Addr) -> Option<InterfaceAddress> {
    ipv4_addresses()?.into_iter().find(|a| a.address == ip)
}

/// The MTU of interface `name`.
pub fn mtu_of(name: &str) -> Option<u32> {
    let sock = control_socket().ok()?;
    let mut req = ifreq_for(name).ok()?;
    ioctl(
        &sock,
        libc::SIOCGIFMTU,
        &mut req as *mut _ as *mut _,
        "read the MTU",
    )
    .ok()?;
    // SAFETY: SIOCGIFMTU filled the mtu member.
    u32::try_from(unsafe { req.ifr_ifru.ifru_mtu }).ok()
}
