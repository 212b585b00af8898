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
#[derive(Clone, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct ExpectedBar {
    /// BAR number (0-5).
    pub index: u8,
    /// Size in bytes.
    pub size: u64,
    /// A 64-bit memory BAR.
    pub is_64bit: bool,
    /// Prefetchable memory.
    pub prefetchable: bool,
}

/// The device validation looks for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct Expected {
    /// What the user named (`0000:65:00.0`, `emulated:8G`).
    pub label: String,
    /// 4 lower-case hex digits (see `crate::output::pci_id`).
    #[serde(serialize_with = "crate::output::pci_id::id16")]
    #[schemars(with = "crate::output::pci_id::Id16Schema")]
    pub vendor: u16,
    /// Device id: 4 lower-case hex digits.
    #[serde(serialize_with = "crate::output::pci_id::id16")]
    #[schemars(with = "crate::output::pci_id::Id16Schema")]
    pub device: u16,
    /// The memory BARs the guest must show, with these sizes and flags.
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

    /// How to find it in the guest: its guest address when known, else its vendor and device ids.
    pub fn selector(&self) -> Selector {
        match self.guest_bdf {
            Some(bdf) => Selector::Bdf { bdf },
            None => Selector::Id {
                vendor: self.vendor,
                device: Some(self.device),
            },
        }
    }

    /// `vendor:device`, 4 hex digits each (`1af4:1110`).
    pub fn id(&self) -> String {
        format!("{:04x}:{:04x}", self.vendor, self.device)
    }

    /// The `nvidia` driver must be bound in the guest: the NVIDIA checks run too.
    pub fn nvidia(&self) -> bool {
        self.driver.as_deref() == Some("nvidia")
    }
}

/// What the agent reported.
#[derive(Clone, Debug, Serialize)]
pub struct GuestView {
    /// The agent's hello: its version, the guest's kernel and command line.
    pub hello: HelloReply,
    /// The matching guest device as last seen (after waiting for it).
    pub device: Option<PciDevice>,
    /// The guest kernel's log since boot (at most 2000 lines).
    pub klog: KernelLogReply,
    /// NVIDIA checks run in the guest (empty when not an NVIDIA guest).
    pub nvidia: Vec<CheckOutcome>,
    /// How long each question to the agent took (the checks' times in JUnit).
    pub timings: Timings,
}

/// Milliseconds spent asking the agent, per question: each check is judged from one of
/// them, and its JUnit `time` is that question's.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct Timings {
    /// The agent's hello.
    pub hello_ms: u64,
    /// Waiting for the device with its BARs assigned.
    pub device_ms: u64,
    /// Reading the guest kernel's log.
    pub kernel_log_ms: u64,
    /// Per NVIDIA check, by name.
    pub checks_ms: std::collections::BTreeMap<String, u64>,
}

impl Timings {
    /// The time behind the check called `name`.
    pub fn of(&self, name: &str) -> u64 {
        match name {
            "agent" => self.hello_ms,
            "kernel-log" => self.kernel_log_ms,
            n => self.checks_ms.get(n).copied().unwrap_or(self.device_ms),
        }
    }
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
    let ms = |t: std::time::Instant| t.elapsed().as_millis() as u64;
    let mut timings = Timings::default();
    let t = std::time::Instant::now();
    let hello = client.hello()?;
    timings.hello_ms = ms(t);
    let t = std::time::Instant::now();
    let device = match exp {
        Some(e) => client
            .wait_device(&e.selector(), wait, true)?
            .device
            .map(|d| *d),
        None => None,
    };
    timings.device_ms = ms(t);
    let t = std::time::Instant::now();
    let klog = client.kernel_log(None, Some(2000))?;
    timings.kernel_log_ms = ms(t);
    let mut nvidia = Vec::new();
    if exp.is_some_and(Expected::nvidia) {
        for (name, _) in NVIDIA_CHECKS {
            let t = std::time::Instant::now();
            nvidia.push(client.run_check(name, &[])?);
            timings.checks_ms.insert(name.to_string(), ms(t));
        }
    }
    Ok(GuestView {
        hello,
        device,
        klog,
        nvidia,
        timings,
    })
}

/// The whole result, as `--json` prints it.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct Report {
    /// Where the agent was reached.
    pub agent: Transport,
    /// The device validated, when one was named.
    pub target: Option<Expected>,
    /// No check failed.
    pub passed: bool,
    /// Every check, with its verdict.
    pub checks: Vec<CheckOutcome>,
    /// How long each question to the agent took.
    pub timings: Timings,
}

impl Report {
    /// A report of `checks` (passed when none failed), timings left at zero.
    pub fn new(agent: Transport, target: Option<Expected>, checks: Vec<CheckOutcome>) -> Self {
        let passed = checks.iter().all(|c| c.verdict != Verdict::Fail);
        Report {
            agent,
            target,
            passed,
            checks,
            timings: Timings::default(),
        }
    }

    /// The report with the agent's answer times (the checks' JUnit times).
    pub fn with_timings(mut self, timings: Timings) -> Self {
        self.timings = timings;
        self
    }
}

/// Read the host device for `--gpu BDF`.
pub fn expected_from_host(root: &SysRoot, bdf: Bdf) -> Result<Expected, vfioctl_common::PciError> {
    PciDevice::read(root, bdf).map(|d| Expected::from_host(&d))
}

/// The JUnit document: one testsuite `vfioctl-validate`, one testcase per check (fail ->
/// `<failure>` with the evidence, skip -> `<skipped>`), each timed by the question to the
/// agent it was judged from; written by the one JUnit writer ([`crate::regress::junit`]).
pub fn junit_report(r: &Report) -> crate::regress::junit::Report {
    use crate::regress::junit::{Case, Report as Junit, Status, Suite};
    let suite = format!(
        "vfioctl-validate{}",
        r.target
            .as_ref()
            .map(|t| format!(" {}", t.label))
            .unwrap_or_default()
    );
    let cases = r
        .checks
        .iter()
        .map(|c| Case {
            name: c.name.clone(),
            classname: "vfioctl.validate".into(),
            time_ms: r.timings.of(&c.name),
            status: match c.verdict {
                Verdict::Pass => Status::Passed,
                Verdict::Fail => Status::Failure {
                    message: c.detail.clone(),
                    kind: c.name.clone(),
                    body: c.evidence.join("\n"),
                },
                Verdict::Skip => Status::Skipped {
                    message: c.detail.clone(),
                },
            },
            system_out: (!c.evidence.is_empty()).then(|| c.evidence.join("\n")),
            system_err: None,
        })
        .collect();
    let t = &r.timings;
    Junit {
        name: "vfioctl validate".into(),
        suites: vec![Suite {
            name: suite,
            hostname: None,
            timestamp: None,
            time_ms: Some(
                t.hello_ms + t.device_ms + t.kernel_log_ms + t.checks_ms.values().sum::<u64>(),
            ),
            properties: vec![("agent".into(), r.agent.to_string())],
            cases,
        }],
    }
}

/// [`junit_report`] as XML.
pub fn junit(r: &Report) -> String {
    junit_report(r).to_xml()
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
            timings: Timings::default(),
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
        assert!(
            x.contains("tests=\"10\" failures=\"0\" errors=\"0\" skipped=\"5\""),
            "{x}"
        );
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
            timings: Timings::default(),
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
            timings: Timings::default(),
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
            timings: Timings::default(),
        };
        let v = evaluate(None, &g);
        assert!(v.iter().all(|c| c.verdict != Verdict::Fail));
        assert!(v
            .iter()
            .filter(|c| c.verdict == Verdict::Skip)
            .all(|c| !c.detail.is_empty()));
    }
}
