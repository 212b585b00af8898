//! The real agent binary on a unix socket on this machine (no VM): protocol, garbage
//! handling, exec policy, device listing with the host's own parser, shutdown.

use std::io::{Read, Write};
use std::time::Duration;

use vfioctl::agent::{AgentClient, ClientError};
use vfioctl_common::proto::{self, ErrorKind, Outcome, PowerAction, Response, Verdict};
use vfioctl_common::{PciDevice, Selector, SysRoot};
use vfioctl_testkit::lab::LocalAgent;

const T: Duration = Duration::from_secs(20);

fn read_response(s: &mut impl Read) -> Response {
    let p = proto::read_frame(s, proto::MAX_REPLY).expect("a reply frame");
    proto::decode_response(&p).expect("a valid response")
}

fn err_kind(r: &Response) -> ErrorKind {
    match &r.result {
        Outcome::Err(e) => e.kind,
        Outcome::Ok(o) => panic!("expected an error, got {o:?}"),
    }
}

#[test]
fn hello_devices_and_checks() {
    let a = LocalAgent::start(&[]);
    let mut c = a.client(T);
    let h = c.hello().unwrap();
    assert_eq!(h.protocol_version, proto::PROTOCOL_VERSION);
    assert!(!h.pid1 && !h.exec_enabled);
    assert!(!h.kernel.is_empty());

    // The agent lists devices with the host's parser: same result as reading here.
    let d = c.list_devices().unwrap();
    let root = SysRoot::host();
    for dev in d.devices.iter().take(8) {
        let here = PciDevice::read(&root, dev.bdf).unwrap();
        assert_eq!(&here, dev);
    }

    // wait_device: an existing device is ready at once; a missing one times out.
    if let Some(dev) = d.devices.first() {
        let w = c
            .wait_device(
                &Selector::Bdf { bdf: dev.bdf },
                Duration::from_secs(5),
                false,
            )
            .unwrap();
        assert!(w.ready);
        assert_eq!(w.device.unwrap().bdf, dev.bdf);
    }
    let w = c
        .wait_device(
            &"fffe:fffe".parse().unwrap(),
            Duration::from_millis(300),
            true,
        )
        .unwrap();
    assert!(!w.ready && w.device.is_none());
    assert!(w.waited_ms >= 300);

    // Named checks: unknown names are errors; known ones give verdicts with reasons.
    let e = c.run_check("frobnicate", &[]).unwrap_err();
    assert!(
        matches!(e, ClientError::Agent { ref error, .. } if error.kind == ErrorKind::UnknownCheck)
    );
    let r = c
        .run_check("module-loaded", &["no_such_module_x".into()])
        .unwrap();
    assert_eq!(r.verdict, Verdict::Fail);

    // Kernel log with a mark: nothing older than the mark comes back.
    match c.kernel_log(None, Some(5)) {
        Ok(k) => {
            assert!(k.records.len() <= 5);
            let k2 = c.kernel_log(Some(k.mark), None).unwrap();
            assert!(k2.records.iter().all(|r| r.seq > k.mark));
        }
        // Unprivileged CI runners may not read the host's /dev/kmsg; the guest test
        // covers the kernel log.
        Err(ClientError::Agent { error, .. }) if error.kind == ErrorKind::Io => {
            vfioctl_testkit::skip(
                &vfioctl_testkit::prereq::test_name(module_path!()),
                &vfioctl_testkit::Missing::new("readable /dev/kmsg", "run the tests as root")
                    .detail(format!("the kernel_log part: {}", error.message)),
            )
        }
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn exec_is_off_by_default_and_bounded_when_on() {
    let off = LocalAgent::start(&[]);
    let mut c = off.client(T);
    let e = c.exec(&["/bin/true"], T, 100).unwrap_err();
    assert!(
        matches!(e, ClientError::Agent { ref error, .. } if error.kind == ErrorKind::ExecDisabled)
    );

    let on = LocalAgent::start(&["--exec"]);
    let mut c = on.client(T);
    let r = c
        .exec(&["sh", "-c", "echo out; echo err >&2; exit 3"], T, 100)
        .unwrap();
    assert_eq!(
        (r.exit_code, r.stdout.as_str(), r.stderr.as_str()),
        (Some(3), "out\n", "err\n")
    );
    // Output is bounded.
    let r = c
        .exec(
            &["sh", "-c", "head -c 100000 /dev/zero | tr '\\0' x"],
            T,
            1000,
        )
        .unwrap();
    assert_eq!(r.stdout.len(), 1000);
    assert!(r.stdout_truncated && r.success());
    // The timeout kills the whole process group.
    let r = c
        .exec(
            &["sh", "-c", "sleep 30 & sleep 30"],
            Duration::from_millis(300),
            100,
        )
        .unwrap();
    assert!(r.timed_out);
    assert_eq!(r.signal, Some(libc::SIGKILL));
    // A missing program is an error reply, and the agent goes on.
    let e = c.exec(&["/no/such/prog"], T, 100).unwrap_err();
    assert!(matches!(e, ClientError::Agent { ref error, .. } if error.kind == ErrorKind::NotFound));
    assert!(c.hello().is_ok());
}

#[test]
fn garbage_gets_error_replies_and_the_agent_keeps_serving() {
    let a = LocalAgent::start(&[]);
    let tr = a.transport();
    let mut c = a.client(T);

    // A well-framed payload that is not a request: error reply, same connection goes on.
    {
        let s = c.stream_mut();
        proto::write_frame(s, b"{\"id\": 9, \"req\": {\"op\": \"rm_rf\"}}").unwrap();
        let r = read_response(s);
        assert_eq!(r.id, Some(9));
        assert_eq!(err_kind(&r), ErrorKind::BadRequest);
        proto::write_frame(s, &[0xff, 0x00, 0x13]).unwrap();
        let r = read_response(s);
        assert_eq!((r.id, err_kind(&r)), (None, ErrorKind::BadRequest));
    }
    assert!(c.hello().is_ok());

    // Not our protocol at all: one error reply, then the connection is closed.
    let mut s = tr.open(T).unwrap();
    s.set_timeout(Some(T)).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let r = read_response(&mut s);
    assert_eq!(err_kind(&r), ErrorKind::BadFrame);
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);

    // An oversized length: refused before anything is read or allocated.
    let mut s = tr.open(T).unwrap();
    s.set_timeout(Some(T)).unwrap();
    s.write_all(&proto::encode_header(u32::MAX)).unwrap();
    assert_eq!(err_kind(&read_response(&mut s)), ErrorKind::TooLarge);

    // A wrong version.
    let mut s = tr.open(T).unwrap();
    s.set_timeout(Some(T)).unwrap();
    let mut h = proto::encode_header(2);
    h[3] = 99;
    s.write_all(&h).unwrap();
    assert_eq!(
        err_kind(&read_response(&mut s)),
        ErrorKind::UnsupportedVersion
    );

    // A peer that sends half a frame and vanishes.
    let mut s = tr.open(T).unwrap();
    s.write_all(&proto::encode_header(100)[..5]).unwrap();
    drop(s);

    // Still serving, old and new connections alike.
    assert!(c.hello().is_ok());
    let mut c2 = a.client(T);
    assert!(c2.list_devices().is_ok());
}

#[test]
fn shutdown_stops_a_service_agent() {
    let mut a = LocalAgent::start(&[]);
    let c = a.client(T);
    c.shutdown(PowerAction::Poweroff).unwrap();
    let status = a.child.wait().unwrap();
    assert!(status.success());
}

#[test]
fn connect_times_out_with_boot_timeout_exit() {
    let dir = tempfile::tempdir().unwrap();
    let tr = vfioctl::agent::Transport::Unix {
        path: dir.path().join("nobody.sock"),
    };
    let token = vfioctl_common::proto::Token::from_bytes(&[1; 32]);
    let e = match AgentClient::connect(&tr, &token, Duration::from_millis(300)) {
        Err(e) => e,
        Ok(_) => panic!("connected to nobody"),
    };
    assert!(matches!(e, ClientError::NotReady { .. }), "{e}");
    use vfioctl::Diagnose;
    assert_eq!(e.exit(), vfioctl::Exit::BootTimeout);
}

/// Send one request frame (raw, with whatever token) and read the reply.
fn raw_call(
    tr: &vfioctl::agent::Transport,
    token: Option<proto::Token>,
) -> (Response, vfioctl::agent::Stream) {
    let mut s = tr.open(T).unwrap();
    s.set_timeout(Some(T)).unwrap();
    let req = proto::Request {
        id: 4,
        token,
        req: proto::RequestBody::Hello,
    };
    proto::write_frame(&mut s, &proto::to_payload(&req)).unwrap();
    (read_response(&mut s), s)
}

#[test]
fn every_request_needs_the_vms_secret() {
    // Reproducer (issue 13, 8): the agent accepted every connection; any local user can
    // reach a guest's vsock port. Without the secret, or with a wrong one: `unauthorized`,
    // and the connection is closed.
    let a = LocalAgent::start(&["--exec"]);
    let tr = a.transport();
    for token in [None, Some(proto::Token::from_bytes(&[0xee; 32]))] {
        let (r, mut s) = raw_call(&tr, token);
        assert_eq!(r.id, Some(4));
        assert_eq!(err_kind(&r), ErrorKind::Unauthorized);
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
        assert!(
            rest.is_empty(),
            "the connection is closed after the refusal"
        );
    }
    // The client with a wrong secret is told so at once (no retry until the deadline),
    // with the fix.
    let start = std::time::Instant::now();
    let e = match AgentClient::connect(&tr, &proto::Token::from_bytes(&[0xee; 32]), T) {
        Err(e) => e,
        Ok(_) => panic!("connected with a wrong secret"),
    };
    assert!(start.elapsed() < Duration::from_secs(5), "{e}");
    assert!(
        matches!(e, ClientError::Agent { ref error, .. } if error.kind == ErrorKind::Unauthorized),
        "{e}"
    );
    use vfioctl::Diagnose;
    assert!(e.hint().unwrap().contains("--token-file"), "{:?}", e.hint());
    // The right secret works, exec included (--exec: the agent's operator decides).
    let mut c = a.client(T);
    assert!(c.exec(&["/bin/true"], T, 10).unwrap().success());
    let (r, _) = raw_call(&tr, Some(a.token.clone()));
    assert!(matches!(r.result, Outcome::Ok(_)));
}

#[test]
fn an_agent_without_a_secret_refuses_everything_and_says_why() {
    // A guest booted without the fw_cfg item: the token file never existed.
    let a = LocalAgent::start(&["--token-file", "/nonexistent/agent.token"]);
    let (r, _) = raw_call(&a.transport(), Some(a.token.clone()));
    let Outcome::Err(e) = r.result else {
        panic!("{r:?}")
    };
    assert_eq!(e.kind, ErrorKind::Unauthorized);
    assert!(
        e.message.contains("no secret") && e.message.contains("fw_cfg"),
        "{}",
        e.message
    );
}

#[test]
fn half_open_handshakes_time_out_without_wedging_the_agent() {
    // Reproducer (issue 13, 8): an abandoned connect wedged the agent. Here: more silent
    // or half-framed connections than the agent serves at once; they are closed after the
    // handshake timeout, and a real client gets through meanwhile.
    let a = LocalAgent::start(&["--handshake-timeout", "0.5"]);
    let tr = a.transport();
    let mut idle = Vec::new();
    for i in 0..40 {
        let mut s = tr.open(T).unwrap();
        if i % 2 == 0 {
            s.write_all(&proto::encode_header(100)[..5]).unwrap();
        }
        idle.push(s);
    }
    let start = std::time::Instant::now();
    let mut c = a.client(Duration::from_secs(30));
    assert!(c.hello().is_ok());
    assert!(start.elapsed() < Duration::from_secs(20));
    // Every silent connection was closed by the agent (EOF, or a reset for the ones
    // refused at accept), none hangs.
    for mut s in idle {
        s.set_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut b = [0u8; 64];
        match s.read(&mut b) {
            Ok(0) => {}
            Ok(n) => panic!("unexpected {n} bytes"),
            Err(e) => assert!(
                !matches!(
                    e.kind(),
                    std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
                ),
                "still open: {e}"
            ),
        }
    }
    // An authenticated connection is not cut by the handshake limit.
    std::thread::sleep(Duration::from_millis(800));
    assert!(c.hello().is_ok());
}

#[test]
fn a_peer_that_is_not_our_agent_is_reported_with_its_cause() {
    // Reproducer (issue 13, 14): a reply with a wrong magic was retried until the timeout
    // and reported as "did not answer". A fake agent that answers HTTP.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fake.sock");
    let l = std::os::unix::net::UnixListener::bind(&path).unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            let mut b = [0u8; 4096];
            let _ = s.read(&mut b);
            let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n");
        }
    });
    let tr = vfioctl::agent::Transport::Unix { path };
    let start = std::time::Instant::now();
    let e = match AgentClient::connect(&tr, &proto::Token::from_bytes(&[1; 32]), T) {
        Err(e) => e,
        Ok(_) => panic!("HTTP is not the agent"),
    };
    assert!(start.elapsed() < Duration::from_secs(5), "not retried: {e}");
    let chain = format!("{e}: {}", std::error::Error::source(&e).unwrap());
    assert!(chain.contains("bad frame magic"), "{chain}");
    use vfioctl::Diagnose;
    assert!(e.hint().unwrap().contains("not a vfioctl agent"));
}
