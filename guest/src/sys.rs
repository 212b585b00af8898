//! The few Linux calls std does not wrap: AF_VSOCK, the kernel uevent netlink socket,
//! mount, finit_module, reboot, poll. Each `unsafe` block is one libc call.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn owned(fd: libc::c_int) -> io::Result<OwnedFd> {
    let fd = cvt(fd)?;
    // SAFETY: `fd` was just returned by the kernel and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A listening AF_VSOCK stream socket on `port` for any CID.
pub fn vsock_listen(port: u32) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2) call.
    let fd =
        owned(unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: sockaddr_vm is plain old data; zeroed is a valid value.
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    addr.svm_port = port;
    addr.svm_cid = libc::VMADDR_CID_ANY;
    // SAFETY: addr is a valid sockaddr_vm of the given length; fd is a valid socket.
    cvt(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            &addr as *const libc::sockaddr_vm as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
        )
    })?;
    // SAFETY: fd is a valid bound socket.
    cvt(unsafe { libc::listen(fd.as_raw_fd(), 16) })?;
    Ok(fd)
}

/// Accept one connection on a listening socket; the peer as text (`cid:port` for vsock).
pub fn accept(listener: &OwnedFd) -> io::Result<(File, String)> {
    // SAFETY: sockaddr_storage is plain old data.
    let mut addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: addr/len describe a writable buffer of the right size; the fd is valid.
    let fd = owned(unsafe {
        libc::accept4(
            listener.as_raw_fd(),
            &mut addr as *mut libc::sockaddr_storage as *mut libc::sockaddr,
            &mut len,
            libc::SOCK_CLOEXEC,
        )
    })?;
    let peer = if addr.ss_family as libc::c_int == libc::AF_VSOCK {
        // SAFETY: the kernel filled a sockaddr_vm (family AF_VSOCK) into the storage.
        let vm = unsafe { &*(&addr as *const libc::sockaddr_storage as *const libc::sockaddr_vm) };
        format!("vsock {}:{}", vm.svm_cid, vm.svm_port)
    } else {
        "unix".to_string()
    };
    Ok((File::from(fd), peer))
}

/// A socket receiving the kernel's uevents (`NETLINK_KOBJECT_UEVENT`, group 1).
pub fn uevent_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2) call.
    let fd = owned(unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            libc::NETLINK_KOBJECT_UEVENT,
        )
    })?;
    // SAFETY: sockaddr_nl is plain old data.
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    addr.nl_groups = 1;
    // SAFETY: addr is a valid sockaddr_nl of the given length.
    cvt(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            &addr as *const libc::sockaddr_nl as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    })?;
    Ok(fd)
}

/// Drain pending uevents; each is `ACTION@DEVPATH\0KEY=VALUE\0...`. Returns their headers.
pub fn read_uevents(fd: &OwnedFd) -> Vec<String> {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        // SAFETY: buf is writable for its length; fd is a valid socket.
        let n = unsafe {
            libc::recv(
                fd.as_raw_fd(),
                buf.as_mut_ptr() as *mut libc::c_void,
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n <= 0 {
            break;
        }
        let msg = &buf[..n as usize];
        let head = msg.split(|b| *b == 0).next().unwrap_or(&[]);
        out.push(String::from_utf8_lossy(head).into_owned());
    }
    out
}

/// `SO_RCVTIMEO` on a socket (vsock or unix); at least 1 ms (0 would mean "forever").
pub fn set_recv_timeout(fd: RawFd, t: Duration) -> io::Result<()> {
    let t = t.max(Duration::from_millis(1));
    let tv = libc::timeval {
        tv_sec: t.as_secs() as libc::time_t,
        tv_usec: t.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: `tv` is a live timeval of the size passed; fd is an open socket.
    cvt(unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &tv as *const libc::timeval as *const libc::c_void,
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    })
    .map(|_| ())
}

/// Wait until `fd` is readable or `timeout` passes; true when readable.
pub fn poll_readable(fd: RawFd, timeout: Duration) -> io::Result<bool> {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
    // SAFETY: one valid pollfd.
    match unsafe { libc::poll(&mut p, 1, ms) } {
        r if r < 0 => {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                Ok(false)
            } else {
                Err(e)
            }
        }
        0 => Ok(false),
        _ => Ok(true),
    }
}

/// mount(2); `EBUSY` (already mounted) is success.
pub fn mount(source: &str, target: &str, fstype: &str, data: Option<&str>) -> io::Result<()> {
    let _ = std::fs::create_dir_all(target);
    let s = CString::new(source)?;
    let t = CString::new(target)?;
    let f = CString::new(fstype)?;
    let d = data.map(CString::new).transpose()?;
    // SAFETY: all pointers are valid NUL-terminated strings or null.
    let r = unsafe {
        libc::mount(
            s.as_ptr(),
            t.as_ptr(),
            f.as_ptr(),
            libc::MS_NOSUID,
            d.as_ref()
                .map_or(std::ptr::null(), |d| d.as_ptr() as *const libc::c_void),
        )
    };
    match cvt(r) {
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Ok(()),
        other => other.map(|_| ()),
    }
}

/// Load a kernel module from an open file. `EEXIST` means it is already loaded.
pub fn finit_module(file: &File, params: &str) -> io::Result<()> {
    let p = CString::new(params)?;
    // SAFETY: valid fd and NUL-terminated params; flags 0.
    let r = unsafe {
        libc::syscall(
            libc::SYS_finit_module,
            file.as_raw_fd(),
            p.as_ptr(),
            0 as libc::c_int,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// sync, then power off or reboot. Only returns on failure.
pub fn reboot(poweroff: bool) -> io::Error {
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
    let cmd = if poweroff {
        libc::RB_POWER_OFF
    } else {
        libc::RB_AUTOBOOT
    };
    // SAFETY: reboot(2) with a valid command.
    unsafe { libc::reboot(cmd) };
    io::Error::last_os_error()
}

/// `uname -r`.
pub fn kernel_release() -> String {
    // SAFETY: utsname is plain old data.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: u is a valid, writable utsname.
    if unsafe { libc::uname(&mut u) } != 0 {
        return String::new();
    }
    // SAFETY: the kernel NUL-terminates release.
    unsafe { std::ffi::CStr::from_ptr(u.release.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

/// Block SIGCHLD in this thread (call before spawning threads so all inherit it); the
/// reaper collects it with `sigwait`.
pub fn block_sigchld() {
    // SAFETY: sigset_t manipulation on a local value; pthread_sigmask on this thread.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGCHLD);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

/// Wait for SIGCHLD (blocked in every thread).
pub fn wait_sigchld() {
    // SAFETY: as in block_sigchld; sigwait writes the signal number into `sig`.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGCHLD);
        let mut sig = 0;
        libc::sigwait(&set, &mut sig);
    }
}

/// Reap one exited child without blocking: `(pid, raw wait status)`.
pub fn reap_one() -> Option<(i32, i32)> {
    let mut status = 0;
    // SAFETY: waitpid with a valid status pointer.
    let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
    (pid > 0).then_some((pid, status))
}

/// Kill a process group.
pub fn kill_group(pgid: i32, sig: libc::c_int) {
    // SAFETY: kill(2) on a negative pid targets the group; harmless if it is gone.
    unsafe { libc::kill(-pgid, sig) };
}
