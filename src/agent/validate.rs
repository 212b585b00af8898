//! `vfioctl validate`: what the guest must show for a passthrough to count as working,
//! judged from what the agent reports. [`evaluate`] is pure (expected device + guest
//! view -> verdicts); [`collect`] asks the agent; [`junit`] writes the report for CI.

use std::time::Duration;

use serde::Serialize;
use vfioctl_common::proto::{
    CheckOutcome, Finding, FindingKind, HelloReply, KernelLogReply, Severity, Verdict,
};
use vfioctl_common::{units, Bdf, PciDevice, Selector, SysRoot};

use super::{AgentClient, ClientError, Transport};

/// ivshmem-plain, the lab's stand-in for a GPU with a large 64-bit BAR.
pub const IVSHMEM: (u16, u16) = (0x1af4, 0x1110);

/// A BAR the guest must show.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ExpectedBar {
    pub index: u8,
    pub size: u64,
    pub is_64bit: bool,
    pub prefetchable: bool,
}

/// The device validation looks for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Expected {
    /// What the user named (`0000:65:00.0`, `emulated:8G`).
    pub label: String,
    pub vendor: u16,
    pub device: u16,
    pub bars: Vec<ExpectedBar>,
    /// The guest's address for it, when known (from the VM state).
    pub guest_bdf: Option<Bdf>,
    /// The driver that must be bound in the guest.
    pub driver: Option<String>,
}

impl Expected {
    /// From a host device (`--gpu BDF`): ids and BAR sizes as the host reports them.
    pub fn from_host(dev: &PciDevice) -> Self {
        Expected {
            label: dev.bdf.to_string(),
            vendor: dev.vendor,
            device: dev.device,
            bars: dev
                .bars
                .iter()
                .filter(|b| !b.io)
                .filter_map(|b| {
                    Some(ExpectedBar {
                        index: b.index,
                        size: b.size?,
                        is_64bit: b.is_64bit,
                        prefetchable: b.prefetchable,
                    })
                })
                .collect(),
            guest_bdf: None,
            driver: None,
        }
    }

    /// The ivshmem-plain stand-in (`--gpu emulated:SIZE`): BAR0 256 B of registers, BAR2
    /// the shared memory as a 64-bit prefetchable BAR.
    pub fn emulated(size: u64) -> Self {
        Expected {
            label: format!("emulated:{}", units::short(size)),
            vendor: IVSHMEM.0,
            device: IVSHMEM.1,
            bars: vec![
                ExpectedBar {
                    index: 0,
                    size: 256,
                    is_64bit: false,
                    prefetchable: false,
                },
                ExpectedBar {
                    index: 2,
                    size,
                    is_64bit: true,
                    prefetchable: true,
                },
            ],
            guest_bdf: None,
            driver: None,
        }
    }

    pub fn selector(&self) -> Selector {
        match self.guest_bdf {
            Some(bdf) => Selector::Bdf { bdf },
            None => Selector::Id {
                vendor: self.vendor,
                device: Some(self.device),
            },
        }
    }

    pub fn id(&self) -> String {
        format!("{:04x}:{:04x}", self.vendor, self.device)
    }

    pub fn nvidia(&self) -> bool {
        self.driver.as_deref() == Some("nvidia")
    }
}

/// What the agent reported.
#[derive(Clone, Debug, Serialize)]
pub struct GuestView {
    pub hello: HelloReply,
    /// The matching guest device as last seen (after waiting for it).
    pub device: Option<PciDevice>,
    pub klog: KernelLogReply,
    /// NVIDIA checks run in the guest (empty when not an NVIDIA guest).
    pub nvidia: Vec<CheckOutcome>,
}

fn check(
    name: &str,
    verdict: Verdict,
    detail: impl Into<String>,
    evidence: Vec<String>,
) -> CheckOutcome {
    CheckOutcome {
        name: name.into(),
        verdict,
        detail: detail.into(),
        evidence,
    }
}

fn finding_lines<'a>(f: impl Iterator<Item = &'a Finding>) -> Vec<String> {
    f.map(|f| f.text.clone()).collect()
}

/// Findings that explain a problem with BAR `index` of `dev` (or with the bridges above
/// it, whose windows the BAR needs).
fn bar_findings<'a>(klog: &'a KernelLogReply, dev: &PciDevice, index: u8) -> Vec<&'a Finding> {
    klog.findings
        .iter()
        .filter(|f| f.kind == FindingKind::BarAssignFailed && f.severity == Severity::Error)
        .filter(|f| match f.bdf {
            Some(b) if b == dev.bdf => f.bar.is_none_or(|i| i == index),
            Some(b) => dev.parents.contains(&b),
            None => false,
        })
        .collect()
}

/// Verdicts, one per check, in a fixed order.
pub fn evaluate(exp: Option<&Expected>, g: &GuestView) -> Vec<CheckOutcome> {
    let mut out = vec![check(
        "agent",
        Verdict::Pass,
        format!(
            "vfioctl-agent {} (protocol {}) on kernel {}, up {:.1} s",
            g.hello.agent_version, g.hello.protocol_version, g.hello.kernel, g.hello.uptime_s
        ),
        vec![g.hello.cmdline.clone()],
    )];
    let no_target = "no device to validate (give --gpu, or --vm with a plugged device)";
    match (exp, &g.device) {
        (None, _) => {
            for n in [
                "device-present",
                "bars-assigned",
                "bars-above-4g",
                "driver-bound",
            ] {
                out.push(check(n, Verdict::Skip, no_target, vec![]));
            }
        }
        (Some(e), None) => {
            out.push(check(
                "device-present",
                Verdict::Fail,
                format!(
                    "the guest has no {} device{}",
                    e.id(),
                    e.guest_bdf.map(|b| format!(" at {b}")).unwrap_or_default()
                ),
                finding_lines(
                    g.klog
                        .findings
                        .iter()
                        .filter(|f| f.severity >= Severity::Warning),
                ),
            ));
            for n in ["bars-assigned", "bars-above-4g", "driver-bound"] {
                out.push(check(
                    n,
                    Verdict::Fail,
                    format!("{} is not in the guest", e.id()),
                    vec![],
                ));
            }
        }
        (Some(e), Some(d)) => {
            out.push(check(
                "device-present",
                Verdict::Pass,
                format!("{} at {} in the guest ({})", e.id(), d.bdf, e.label),
                vec![],
            ));
            // Every BAR the host has, assigned, same size.
            let mut problems = Vec::new();
            let mut evidence = Vec::new();
            for eb in &e.bars {
                match d.bars.iter().find(|b| b.index == eb.index) {
                    None => problems.push(format!(
                        "BAR{} ({}) missing",
                        eb.index,
                        units::short(eb.size)
                    )),
                    Some(b) if !b.assigned => {
                        let lines = bar_findings(&g.klog, d, eb.index);
                        problems.push(format!(
                            "BAR{} ({}{}) not assigned{}",
                            eb.index,
                            units::short(eb.size),
                            if eb.is_64bit { " 64b pref" } else { "" },
                            lines
                                .first()
                                .map(|f| format!(": kernel: {}", f.text))
                                .unwrap_or_default()
                        ));
                        evidence.extend(lines.iter().map(|f| f.text.clone()));
                    }
                    Some(b) if b.size != Some(eb.size) => problems.push(format!(
                        "BAR{} is {} in the guest, {} on the host",
                        eb.index,
                        b.size.map(units::short).unwrap_or_else(|| "?".into()),
                        units::short(eb.size)
                    )),
                    Some(b) => evidence.push(b.summary()),
                }
            }
            out.push(if problems.is_empty() {
                check(
                    "bars-assigned",
                    Verdict::Pass,
                    format!("{} BAR(s) assigned with the host's sizes", e.bars.len()),
                    evidence,
                )
            } else {
                check(
                    "bars-assigned",
                    Verdict::Fail,
                    problems.join("; "),
                    evidence,
                )
            });
            // 64-bit BARs above 4 GiB.
            let wide: Vec<&ExpectedBar> = e.bars.iter().filter(|b| b.is_64bit).collect();
            if wide.is_empty() {
                out.push(check(
                    "bars-above-4g",
                    Verdict::Skip,
                    "the device has no 64-bit BARs",
                    vec![],
                ));
            } else {
                let mut bad = Vec::new();
                let mut ev = Vec::new();
                for eb in wide {
                    match d.bars.iter().find(|b| b.index == eb.index) {
                        Some(b) if b.assigned && b.above_4g => ev.push(b.summary()),
                        Some(b) if b.assigned => {
                            bad.push(format!("BAR{} at {:#x}, below 4 GiB", b.index, b.start))
                        }
                        _ => bad.push(format!("BAR{} not assigned", eb.index)),
                    }
                }
                out.push(if bad.is_empty() {
                    check(
                        "bars-above-4g",
                        Verdict::Pass,
                        "every 64-bit BAR lies above 4 GiB",
                        ev,
                    )
                } else {
                    check("bars-above-4g", Verdict::Fail, bad.join("; "), ev)
                });
            }
            out.push(match &e.driver {
                None => check(
                    "driver-bound",
                    Verdict::Skip,
                    "no guest driver expected (--expect-driver)",
                    vec![],
                ),
                Some(want) if d.driver.as_deref() == Some(want) => check(
                    "driver-bound",
                    Verdict::Pass,
                    format!("{} bound to {want}", d.bdf),
                    vec![],
                ),
                Some(want) => check(
                    "driver-bound",
                    Verdict::Fail,
                    format!(
                        "{} is bound to {}, expected {want}",
                        d.bdf,
                        d.driver.as_deref().unwrap_or("no driver")
                    ),
                    vec![],
                ),
            });
        }
    }
    // The kernel log: no BAR, hotplug, NVRM or firmware errors.
    let errors: Vec<&Finding> = g
        .klog
        .findings
        .iter()
        .filter(|f| f.severity == Severity::Error)
        .collect();
    let warnings = g
        .klog
        .findings
        .iter()
        .filter(|f| f.severity == Severity::Warning)
        .count();
    out.push(if errors.is_empty() {
        check(
            "kernel-log",
            Verdict::Pass,
            format!(
                "no BAR, hotplug, NVRM or firmware errors in {} records{}",
                g.klog.records.len(),
                if warnings > 0 {
                    format!(" ({warnings} warning(s), e.g. I/O windows)")
                } else {
                    String::new()
                }
            ),
            vec![],
        )
    } else {
        check(
            "kernel-log",
            Verdict::Fail,
            format!("{} error line(s): {}", errors.len(), errors[0].text),
            finding_lines(errors.into_iter()),
        )
    });
    let nvidia = exp.is_some_and(Expected::nvidia);
    for (name, _) in NVIDIA_CHECKS {
        match g.nvidia.iter().find(|c| c.name == *name) {
            Some(c) => out.push(c.clone()),
            None => out.push(check(
                name,
                if nvidia { Verdict::Fail } else { Verdict::Skip },
                if nvidia {
                    "the agent did not run this check".to_string()
                } else {
                    "not an NVIDIA guest (--expect-driver nvidia)".to_string()
                },
                vec![],
            )),
        }
    }
    out
}

/// The NVIDIA checks, run in the guest.
pub const NVIDIA_CHECKS: &[(&str, &str)] = &[
    (
        "nvidia-dev-nodes",
        "/dev/nvidia0, /dev/nvidiactl, /dev/nvidia-uvm",
    ),
    ("nvidia-proc-version", "/proc/driver/nvidia/version"),
    ("nvidia-smi", "nvidia-smi -L lists the GPU"),
    ("nvidia-cdi-or-hook", "CDI spec or the toolkit OCI hook"),
];

/// Ask the agent for everything [`evaluate`] needs. Waits (event-driven, in the guest)
/// up to `wait` for the device to appear with its BARs assigned.
pub fn collect(
    client: &mut AgentClient,
    exp: Option<&Expected>,
    wait: Duration,
) -> Result<GuestView, ClientError> {
    let hello = client.hello()?;
    let device = match exp {
        Some(e) => client
            .wait_device(&e.selector(), wait, true)?
            .device
            .map(|d| *d),
        None => None,
    };
    let klog = client.kernel_log(None, Some(2000))?;
    let mut nvidia = Vec::new();
    if exp.is_some_and(Expected::nvidia) {
        for (name, _) in NVIDIA_CHECKS {
            nvidia.push(client.run_check(name, &[])?);
        }
    }
    Ok(GuestView {
        hello,
        device,
        klog,
        nvidia,
    })
}

/// The whole result, as `--json` prints it.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub agent: Transport,
    pub target: Option<Expected>,
    pub passed: bool,
    pub checks: Vec<CheckOutcome>,
}

impl Report {
    pub fn new(agent: Transport, target: Option<Expected>, checks: Vec<CheckOutcome>) -> Self {
        let passed = checks.iter().all(|c| c.verdict != Verdict::Fail);
        Report {
            agent,
            target,
            passed,
            checks,
        }
    }
}

/// Read the host device for `--gpu BDF`.
pub fn expected_from_host(root: &SysRoot, bdf: Bdf) -> Result<Expected, vfioctl_common::PciError> {
    PciDevice::read(root, bdf).map(|d| Expected::from_host(&d))
}

/// Guest text into XML 1.0: the shared escaper (no `&#27;`, which XML 1.0 forbids).
fn xml_escape(s: &str) -> String {
    vfioctl_common::text::xml(s)
}

/// JUnit XML: one testsuite `vfioctl-validate`, one testcase per check; fail ->
/// `<failure>`, skip -> `<skipped>`.
pub fn junit(r: &Report) -> String {
    let failures = r
        .checks
        .iter()
        .filter(|c| c.verdict == Verdict::Fail)
        .count();
    let skipped = r
        .checks
        .iter()
        .filter(|c| c.verdict == Verdict::Skip)
        .count();
    let suite = format!(
        "vfioctl-validate{}",
        r.target
            .as_ref()
            .map(|t| format!(" {}", t.label))
            .unwrap_or_default()
    );
    let mut s = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    s.push_str(&format!(
        "<testsuites name=\"vfioctl\" tests=\"{}\" failures=\"{failures}\" skipped=\"{skipped}\">\n",
        r.checks.len()
    ));
    s.push_str(&format!(
        "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{failures}\" skipped=\"{skipped}\" errors=\"0\">\n",
        xml_escape(&suite),
        r.checks.len()
    ));
    for c in &r.checks {
        s.push_str(&format!(
            "    <testcase classname=\"vfioctl.validate\" name=\"{}\"",
            xml_escape(&c.name)
        ));
        let body = if c.evidence.is_empty() {
            String::new()
        } else {
            format!(
                "      <system-out>{}</system-out>\n",
                xml_escape(&c.evidence.join("\n"))
            )
        };
        match c.verdict {
            Verdict::Pass if body.is_empty() => s.push_str("/>\n"),
            Verdict::Pass => s.push_str(&format!(">\n{body}    </testcase>\n")),
            Verdict::Fail => s.push_str(&format!(
                ">\n      <failure message=\"{}\"/>\n{body}    </testcase>\n",
                xml_escape(&c.detail)
            )),
            Verdict::Skip => s.push_str(&format!(
                ">\n      <skipped message=\"{}\"/>\n{body}    </testcase>\n",
                xml_escape(&c.detail)
            )),
        }
    }
    s.push_str("  </testsuite>\n</testsuites>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use vfioctl_common::pci::{Bar, BarKind};
    use vfioctl_common::proto::{findings, KmsgRecord};

    fn hello() -> HelloReply {
        HelloReply {
            agent_version: "0.1.0".into(),
            protocol_version: 1,
            kernel: "6.1.0-56-amd64".into(),
            kernel_version: String::new(),
            cmdline: "console=ttyS0".into(),
            uptime_s: 4.2,
            pid1: true,
            exec_enabled: false,
            modules: vec![],
            rss_kib: None,
        }
    }

    fn klog(lines: &[&str]) -> KernelLogReply {
        let records: Vec<KmsgRecord> = lines
            .iter()
            .enumerate()
            .map(|(i, l)| KmsgRecord {
                seq: i as u64,
                level: 6,
                ts_us: 0,
                text: l.to_string(),
            })
            .collect();
        KernelLogReply {
            findings: findings(&records),
            mark: records.len() as u64,
            records,
            truncated: false,
        }
    }

    fn bar(index: u8, start: u64, size: u64, wide: bool, assigned: bool) -> Bar {
        Bar {
            index,
            start: if assigned { start } else { 0 },
            size: Some(size),
            kind: if wide { BarKind::Mem64 } else { BarKind::Mem32 },
            is_64bit: wide,
            prefetchable: wide,
            io: false,
            assigned,
            above_4g: assigned && start > 0xffff_ffff,
            flags: 0,
        }
    }

    fn ivshmem(bars: Vec<Bar>) -> PciDevice {
        PciDevice {
            bdf: "0000:01:00.0".parse().unwrap(),
            vendor: 0x1af4,
            device: 0x1110,
            subsystem_vendor: None,
            subsystem_device: None,
            class: 0x050000,
            revision: Some(1),
            driver: None,
            driver_override: None,
            iommu_group: None,
            iommu_group_peers: vec![],
            parents: vec!["0000:00:10.0".parse().unwrap()],
            sysfs_path: "/sys/devices/pci0000:00/0000:00:10.0/0000:01:00.0".into(),
            is_pcie: true,
            is_bridge: false,
            multifunction: false,
            link: None,
            numa_node: None,
            reset_methods: None,
            boot_vga: None,
            sriov: None,
            power_state: None,
            d3cold_allowed: None,
            resizable_bars: vec![],
            bars,
            vfio_dev: false,
            consumers: vec![],
        }
    }

    fn verdicts(v: &[CheckOutcome]) -> Vec<(String, Verdict)> {
        v.iter().map(|c| (c.name.clone(), c.verdict)).collect()
    }

    #[test]
    fn stand_in_on_a_sized_port_passes() {
        let exp = Expected::emulated(8 << 30);
        let g = GuestView {
            hello: hello(),
            device: Some(ivshmem(vec![
                bar(0, 0xfe800000, 256, false, true),
                bar(2, 0x200000000, 8 << 30, true, true),
            ])),
            klog: klog(&[
                "pci 0000:01:00.0: BAR 2 [mem 0x200000000-0x3ffffffff 64bit pref]: assigned",
                "pci 0000:00:10.1: bridge window [io  size 0x1000]: can't assign; no space",
            ]),
            nvidia: vec![],
        };
        let v = evaluate(Some(&exp), &g);
        use Verdict::*;
        assert_eq!(
            verdicts(&v),
            [
                ("agent", Pass),
                ("device-present", Pass),
                ("bars-assigned", Pass),
                ("bars-above-4g", Pass),
                ("driver-bound", Skip),
                ("kernel-log", Pass),
                ("nvidia-dev-nodes", Skip),
                ("nvidia-proc-version", Skip),
                ("nvidia-smi", Skip),
                ("nvidia-cdi-or-hook", Skip),
            ]
            .map(|(n, v)| (n.to_string(), v))
        );
        let r = Report::new(Transport::Vsock { cid: 3, port: 1024 }, Some(exp), v);
        assert!(r.passed);
        let x = junit(&r);
        assert!(x.contains("tests=\"10\" failures=\"0\" skipped=\"5\""));
    }

    #[test]
    fn negative_control_names_the_bar_and_the_no_space_line() {
        let exp = Expected::emulated(8 << 30);
        let g = GuestView {
            hello: hello(),
            device: Some(ivshmem(vec![
                bar(0, 0xfe800000, 256, false, true),
                bar(2, 0, 8 << 30, true, false),
            ])),
            klog: klog(&[
                "pci 0000:01:00.0: BAR 2: no space for [mem size 0x200000000 64bit pref]",
                "pci 0000:01:00.0: BAR 2: failed to assign [mem size 0x200000000 64bit pref]",
            ]),
            nvidia: vec![],
        };
        let v = evaluate(Some(&exp), &g);
        let bars = v.iter().find(|c| c.name == "bars-assigned").unwrap();
        assert_eq!(bars.verdict, Verdict::Fail);
        assert_eq!(
            bars.detail,
            "BAR2 (8G 64b pref) not assigned: kernel: pci 0000:01:00.0: BAR 2: no space for [mem size 0x200000000 64bit pref]"
        );
        let a4 = v.iter().find(|c| c.name == "bars-above-4g").unwrap();
        assert_eq!(a4.verdict, Verdict::Fail);
        let kl = v.iter().find(|c| c.name == "kernel-log").unwrap();
        assert_eq!(kl.verdict, Verdict::Fail);
        assert_eq!(kl.evidence.len(), 2);
        let r = Report::new(Transport::Vsock { cid: 3, port: 1024 }, Some(exp), v);
        assert!(!r.passed);
        let x = junit(&r);
        assert!(x.contains("<failure message=\"BAR2 (8G 64b pref) not assigned: kernel: pci 0000:01:00.0: BAR 2: no space"));
    }

    #[test]
    fn missing_device_and_nvidia_guest() {
        let mut exp = Expected::emulated(1 << 30);
        exp.driver = Some("nvidia".into());
        let g = GuestView {
            hello: hello(),
            device: None,
            klog: klog(&["NVRM: GPU 0000:01:00.0: RmInitAdapter failed! (0x22:0x56:742)"]),
            nvidia: vec![CheckOutcome {
                name: "nvidia-smi".into(),
                verdict: Verdict::Fail,
                detail: "no GPU".into(),
                evidence: vec![],
            }],
        };
        let v = evaluate(Some(&exp), &g);
        assert!(v
            .iter()
            .filter(|c| c.name != "agent")
            .all(|c| c.verdict == Verdict::Fail));
        assert!(v[1].detail.contains("no 1af4:1110 device"));
    }

    #[test]
    fn no_target_skips_device_checks_with_a_reason() {
        let g = GuestView {
            hello: hello(),
            device: None,
            klog: klog(&[]),
            nvidia: vec![],
        };
        let v = evaluate(None, &g);
        assert!(v.iter().all(|c| c.verdict != Verdict::Fail));
        assert!(v
            .iter()
            .filter(|c| c.verdict == Verdict::Skip)
            .all(|c| !c.detail.is_empty()));
    }

    #[test]
    fn xml_is_escaped() {
        assert_eq!(
            xml_escape("a<b & \"c\"\u{1}\u{1b}[31m"),
            "a&lt;b &amp; &quot;c&quot;\\x01\\x1b[31m"
        );
    }
}
