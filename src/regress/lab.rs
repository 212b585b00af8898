//! The real backend: every step through the library's own APIs.
//!
//! | step | library call |
//! |---|---|
//! | check | host devices resolved through the PCI model (`SysRoot`), QEMU and the guest artefacts present |
//! | bind / restore | `vfioctl::bind` (ledger-backed; restore is idempotent) |
//! | vm-up / vm-down | `vfioctl::vm` lifecycle (QEMU, vsock, agent readiness) |
//! | plug / unplug | `vfioctl::vm` hotplug over QMP |
//! | validate | the guest agent's `validate` |
//!
//! Every step runs under the plan's limit for it (an async step over its limit is
//! cancelled and fails; cleanup follows). Failures carry the serial console, QEMU's
//! stderr, the QMP error and, from the agent, the guest's kernel log.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use vfioctl_common::pci::device::enumerate;
use vfioctl_common::pci::{select_among, SelectError};
use vfioctl_common::proto::{CheckOutcome, Verdict};
use vfioctl_common::{Bdf, PciDevice, Selector, SysRoot};

use super::exec::{Backend, StepCtx};
use super::nested;
use super::plan::{DeviceSpec, Firmware, Kind, Plan, PlugMode, Reserve, Scenario};
use super::results::{excerpt, LogExcerpt, StepFailure};
use super::step::Step;
use crate::agent::validate::{self, Expected};
use crate::agent::AgentClient;
use crate::bind;
use crate::qmp::Qmp;
use crate::rootfs::{self, agent_bin, BuildOptions};
use crate::shared::lab as shared_lab;
use crate::shared::stack::{self, Stack};
use crate::vm::profile::{lab_kernel, AccelChoice, DeviceEntry, GpuSpec, PlugWhen, Profile, Ready};
use crate::vm::{lifecycle, plug, process, Env, Firmware as VmFirmware, VmError, VmName, VmRecord};
use crate::{Context, Diagnose, Exit, Failure};

/// A host device picked by a scenario, with its IOMMU group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostDevice {
    /// The device's PCI address.
    pub bdf: Bdf,
    /// Its IOMMU group (None: the host shows none).
    pub group: Option<u32>,
}

/// Exclusivity keys from resolved host devices (pure): the IOMMU group when known (binding
/// takes the whole group), else the address.
pub fn keys_for(devices: &[HostDevice]) -> BTreeSet<String> {
    devices
        .iter()
        .map(|d| match d.group {
            Some(g) => format!("iommu-group:{g}"),
            None => format!("pci:{}", d.bdf),
        })
        .collect()
}

/// Resolve a scenario's host selectors against the host's PCI devices (through
/// `common`'s device selection; a device that cannot be read is no candidate).
pub fn resolve(root: &SysRoot, sc: &Scenario) -> Result<Vec<HostDevice>, SelectError> {
    let selectors: Vec<Selector> = sc
        .devices
        .iter()
        .filter_map(|d| match d {
            DeviceSpec::Host { selector } => Some(selector.clone()),
            DeviceSpec::Emulated { .. } => None,
        })
        .collect();
    if selectors.is_empty() {
        return Ok(Vec::new());
    }
    let readable: Vec<PciDevice> = enumerate(root)?
        .into_iter()
        .filter_map(|b| PciDevice::read(root, b).ok())
        .collect();
    let candidates: Vec<Bdf> = readable.iter().map(|d| d.bdf).collect();
    let picked = select_among(root, &selectors, &candidates, "on this host")?;
    Ok(picked
        .into_iter()
        .map(|bdf| HostDevice {
            bdf,
            group: readable
                .iter()
                .find(|d| d.bdf == bdf)
                .and_then(|d| d.iommu_group),
        })
        .collect())
}

/// Find an executable on `PATH` (or a path as given).
pub fn which(prog: &Path) -> Option<PathBuf> {
    if prog.components().count() > 1 {
        return prog.is_file().then(|| prog.to_path_buf());
    }
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(prog))
            .find(|c| c.is_file())
    })
}

/// The real backend.
pub struct LabBackend {
    /// The command's context (host root, output mode).
    pub ctx: Context,
    /// The QEMU binary to run (`qemu-system-x86_64` on `PATH` by default).
    pub qemu: PathBuf,
    /// Where VM runtime directories go: short, because unix socket paths are limited to
    /// 108 bytes (the per-scenario output directory may be deep).
    pub run_base: PathBuf,
    /// The lab guest initramfs (agent as /init) per guest kernel (its modules go in), for
    /// scenarios without `initrd`, built by [`LabBackend::prepare_guest`].
    guest: Mutex<BTreeMap<PathBuf, Result<PathBuf, StepFailure>>>,
    /// The nested scenarios' L1 initramfs (QEMU, vfioctl and the L2 guest inside) per kind
    /// and L1 kernel, built once per run by the first such scenario's `check` step.
    nested: Mutex<BTreeMap<(Kind, PathBuf), Result<PathBuf, StepFailure>>>,
    /// The static guest agent for the initramfs images it builds (`regress --agent`).
    pub agent: Option<PathBuf>,
    /// The static vfioctl for the nested scenario's L1 guest (`regress --static-vfioctl`).
    pub static_vfioctl: Option<PathBuf>,
}

/// How to get a static vfioctl for `--static-vfioctl`.
const STATIC_VFIOCTL_HINT: &str =
    "build one from a checkout with scripts/build-static-vfioctl (it prints the path to pass)";

impl LabBackend {
    /// A backend for `ctx`, with QEMU from `PATH` and a per-process runtime directory under the temp dir.
    pub fn new(ctx: Context) -> Self {
        Self {
            ctx,
            qemu: PathBuf::from("qemu-system-x86_64"),
            run_base: std::env::temp_dir().join(format!("vfioctl-regress-{}", std::process::id())),
            guest: Mutex::new(BTreeMap::new()),
            nested: Mutex::new(BTreeMap::new()),
            agent: None,
            static_vfioctl: None,
        }
    }

    /// The static guest agent for the images this run builds: `--agent PATH`, else an
    /// installed one ([`agent_bin::installed`]). Never a cargo build: a regression run must
    /// not compile anything in a source tree it happens to sit in.
    pub fn agent_binary(&self) -> Result<PathBuf, StepFailure> {
        agent_bin::resolve(self.agent.as_deref()).map_err(|e| match e {
            rootfs::RootfsError::NoAgent { .. } => {
                let mut f = StepFailure::new(
                    Exit::Usage,
                    "no guest agent for the lab initramfs: pass --agent PATH or set `initrd` in the plan",
                );
                f.hint = e.hint();
                f
            }
            e => StepFailure::from(Failure::from(e)),
        })
    }

    /// The static vfioctl that the nested scenario's L1 guest runs: `--static-vfioctl PATH`,
    /// else the running vfioctl when it is itself static. Never a cargo build.
    pub fn static_vfioctl_binary(&self) -> Result<PathBuf, StepFailure> {
        if let Some(p) = &self.static_vfioctl {
            return match std::fs::read(p) {
                Ok(b) if agent_bin::is_static_elf(&b) == Some(true) => Ok(p.clone()),
                Ok(_) => {
                    let mut f = fail(
                        Exit::Usage,
                        format!("--static-vfioctl {}: not a static executable", p.display()),
                    );
                    f.hint = Some(STATIC_VFIOCTL_HINT.into());
                    Err(f)
                }
                Err(e) => Err(fail(
                    Exit::Usage,
                    format!("--static-vfioctl {}: {e}", p.display()),
                )),
            };
        }
        std::env::current_exe()
            .ok()
            .filter(|e| std::fs::read(e).is_ok_and(|b| agent_bin::is_static_elf(&b) == Some(true)))
            .ok_or_else(|| {
                let mut f = fail(
                    Exit::Usage,
                    "no static vfioctl for the nested scenario's L1 guest: pass --static-vfioctl PATH",
                );
                f.hint = Some(STATIC_VFIOCTL_HINT.into());
                f
            })
    }

    /// The scenario's lab stack (`stack = "..."` in the plan), resolved in the lab dir.
    fn stack(sc: &Scenario) -> Result<Option<Stack>, StepFailure> {
        sc.stack
            .as_deref()
            .map(|n| {
                stack::resolve(n, &crate::vm::profile::lab_dir()).map_err(|e| {
                    let mut f = fail(e.exit(), format!("scenario {}: {e}", sc.name));
                    f.hint = e.hint();
                    f
                })
            })
            .transpose()
    }

    /// The QEMU a scenario runs and the arguments its stack needs (`-L`): the stack's, else
    /// the backend's.
    fn qemu_for(&self, sc: &Scenario) -> Result<(PathBuf, Vec<String>), StepFailure> {
        Ok(match Self::stack(sc)? {
            Some(st) => {
                let args = st.qemu_args();
                (st.qemu, args)
            }
            None => (self.qemu.clone(), Vec::new()),
        })
    }

    /// The guest kernel of a scenario: its own, else its stack's, else the lab's current.
    fn kernel_for(sc: &Scenario) -> Option<PathBuf> {
        sc.kernel.clone().or_else(|| {
            Self::stack(sc)
                .ok()
                .flatten()
                .and_then(|st| st.kernel)
                .or_else(lab_kernel)
        })
    }

    /// Build the lab initramfs (`rootfs/lab.toml`: the static agent as /init plus the vsock
    /// modules of the scenario kernel) into `out`, once per guest kernel that a scenario
    /// without `initrd` boots (`guest/initramfs.cpio.gz` for the first kernel,
    /// `guest/<kernel dir>/...` for the others). Returns each kernel with its result and
    /// how long that one build took.
    pub fn prepare_guest(
        &self,
        plan: &Plan,
        out: &Path,
    ) -> Vec<(
        Option<PathBuf>,
        Result<PathBuf, StepFailure>,
        std::time::Duration,
    )> {
        let mut kernels: Vec<Option<PathBuf>> = Vec::new();
        for sc in plan
            .scenarios
            .iter()
            .filter(|s| s.initrd.is_none() && !s.kind.is_nested())
        {
            let k = Self::kernel_for(sc);
            if !kernels.contains(&k) {
                kernels.push(k);
            }
        }
        let mut done = Vec::new();
        let mut map = self.guest.lock().unwrap_or_else(|e| e.into_inner());
        for (i, k) in kernels.into_iter().enumerate() {
            let sub = match (i, &k) {
                (0, _) | (_, None) => out.join("guest"),
                (_, Some(k)) => out.join("guest").join(
                    k.parent()
                        .and_then(|p| p.file_name())
                        .map(|n| n.to_string_lossy().to_string())
                        .unwrap_or_else(|| format!("k{i}")),
                ),
            };
            let t = std::time::Instant::now();
            let r = self.build_guest(k.as_deref(), &sub);
            if let Some(k) = &k {
                map.insert(k.clone(), r.clone());
            }
            done.push((k, r, t.elapsed()));
        }
        done
    }

    fn build_guest(&self, kernel: Option<&Path>, dir: &Path) -> Result<PathBuf, StepFailure> {
        let kernel = kernel.ok_or_else(|| {
            StepFailure::new(
                Exit::Usage,
                "no guest kernel: set `kernel` in the plan or run scripts/setup",
            )
        })?;
        let tree = agent_bin::source_tree().ok_or_else(|| {
            StepFailure::new(
                Exit::Usage,
                "no source tree with rootfs/lab.toml next to this vfioctl: set `initrd` in the plan",
            )
        })?;
        let modules = kernel.parent().map(Path::to_path_buf).unwrap_or_default();
        let opts = BuildOptions {
            manifest: tree.join("rootfs/lab.toml"),
            kernel_modules: Some(modules),
            out: dir.join("initramfs.cpio.gz"),
            agent: Some(self.agent_binary()?),
            ..BuildOptions::default()
        };
        rootfs::build(&opts)
            .map(|r| r.out)
            .map_err(|e| StepFailure::from(Failure::from(e)))
    }

    /// Build a nested scenario's L1 initramfs once per kind and L1 kernel (see
    /// [`nested`]): the nested kind carries the system QEMU and `rootfs/lab-nested.toml`,
    /// the shared-GPU kinds their stack's QEMU (10) and `rootfs/lab-sriov.toml`.
    fn prepare_nested(
        &self,
        sc: &Scenario,
        kernel: &Path,
        dir: &Path,
    ) -> Result<PathBuf, StepFailure> {
        let key = (sc.kind, kernel.to_path_buf());
        let mut map = self.nested.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = map.get(&key) {
            return r.clone();
        }
        let r = self.build_nested(sc, kernel, dir);
        map.insert(key, r.clone());
        r
    }

    fn build_nested(
        &self,
        sc: &Scenario,
        kernel: &Path,
        dir: &Path,
    ) -> Result<PathBuf, StepFailure> {
        let tree = agent_bin::source_tree().ok_or_else(|| {
            fail(
                Exit::Usage,
                "no source tree with rootfs/lab-nested.toml next to this vfioctl",
            )
        })?;
        let (qemu, _) = self.qemu_for(sc)?;
        let qemu = which(&qemu).ok_or_else(|| {
            fail(
                Exit::Infrastructure,
                format!("{} not found", qemu.display()),
            )
        })?;
        let agent = self.agent_binary()?;
        let vfioctl = self.static_vfioctl_binary()?;
        let inputs = nested::NestedInputs {
            tree: &tree,
            kernel,
            agent: &agent,
            vfioctl: &vfioctl,
            qemu: &qemu,
            out_dir: dir,
        };
        let built = match (sc.kind, Self::stack(sc)?) {
            (Kind::Nested, None) | (Kind::Passthrough, _) => nested::build_initrds(&inputs),
            (kind, st) => {
                let payload = match &st {
                    Some(st) => {
                        nested::qemu_payload_from(&qemu, &st.module_dir, st.data_dir.as_deref())
                    }
                    None => nested::qemu_payload(&qemu),
                }
                .map_err(|e| fail(Exit::Infrastructure, e.to_string()))?;
                let manifest = match kind {
                    Kind::Nested | Kind::Passthrough => "rootfs/lab-nested.toml",
                    Kind::Sriov | Kind::Mdev | Kind::Iommufd => "rootfs/lab-sriov.toml",
                };
                nested::build_initrds_with(
                    &inputs,
                    payload,
                    manifest,
                    &format!("{kind}-l1.cpio.gz"),
                )
            }
        };
        built.map_err(|e| fail(Exit::Infrastructure, e.to_string()))
    }

    fn initrd(&self, sc: &Scenario) -> Result<PathBuf, StepFailure> {
        let kernel = Self::kernel_for(sc);
        if sc.kind.is_nested() {
            let map = self.nested.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(r) = kernel.and_then(|k| map.get(&(sc.kind, k))) {
                return r.clone();
            }
            return Err(StepFailure::new(
                Exit::Infrastructure,
                "the L1 initramfs was not prepared (the check step builds it)",
            ));
        }
        if let Some(p) = &sc.initrd {
            return Ok(p.clone());
        }
        let map = self.guest.lock().unwrap_or_else(|e| e.into_inner());
        match kernel.and_then(|k| map.get(&k).cloned()) {
            Some(r) => r,
            None => Err(StepFailure::new(
                Exit::Infrastructure,
                "the lab initramfs was not prepared (LabBackend::prepare_guest)",
            )),
        }
    }
}

/// A device as the VM module names it, with the port it goes to.
#[derive(Clone, Debug)]
struct VmDevice {
    gpu: GpuSpec,
    /// Index into the VM's ports, known after `vm-up`.
    port: usize,
    /// QEMU id once plugged (`gpu0`).
    id: Option<String>,
    guest_bdf: Option<String>,
}

/// Per-scenario state.
pub struct LabSession {
    /// The scenario's own output directory.
    pub dir: PathBuf,
    /// The host devices it resolved (set by its `check` step).
    pub host_devices: Vec<HostDevice>,
    /// Devices bound by this scenario (restored by `restore`).
    bound: Vec<Bdf>,
    rt: Option<tokio::runtime::Runtime>,
    env: Option<Env>,
    rec: Option<VmRecord>,
    qmp: Option<Qmp>,
    devices: Vec<VmDevice>,
    /// What the guest agent said at boot (kernel, agent version), for the report.
    hello: Option<vfioctl_common::proto::HelloReply>,
}

fn fail(exit: Exit, msg: impl Into<String>) -> StepFailure {
    StepFailure::new(exit, msg)
}

fn from_diag<E: crate::Diagnose + Send + Sync + 'static>(e: E) -> StepFailure {
    StepFailure::from(Failure::from(e))
}

/// Logs of a VM for a failure: serial console and QEMU's stderr.
fn vm_logs(mut f: StepFailure, rec: Option<&VmRecord>) -> StepFailure {
    if let Some(r) = rec {
        let serial = std::fs::read(&r.serial_log).unwrap_or_default();
        f = f.with_log(excerpt("serial", &String::from_utf8_lossy(&serial), 40));
        let err = std::fs::read(&r.qemu_stderr).unwrap_or_default();
        f = f.with_log(excerpt("qemu-stderr", &String::from_utf8_lossy(&err), 20));
    }
    f
}

impl LabSession {
    fn block_on<F: std::future::Future>(&self, f: F) -> Result<F::Output, StepFailure> {
        let rt = self
            .rt
            .as_ref()
            .ok_or_else(|| fail(Exit::Infrastructure, "no async runtime for this scenario"))?;
        Ok(rt.block_on(f))
    }

    /// Run `f` with a limit; a step over its limit fails (and cleanup follows).
    fn timed<F: std::future::Future>(
        &self,
        step: Step,
        limit: Duration,
        exit: Exit,
        f: F,
    ) -> Result<F::Output, StepFailure> {
        self.block_on(async { tokio::time::timeout(limit, f).await })?
            .map_err(|_| {
                fail(
                    exit,
                    format!(
                        "{step} did not finish within {} s (plan timeout)",
                        limit.as_secs()
                    ),
                )
            })
    }

    fn agent(&self, limit: Duration) -> Result<AgentClient, StepFailure> {
        let rec = self.rec.as_ref().ok_or_else(|| {
            fail(
                Exit::Infrastructure,
                "the VM has no agent transport (no vsock)",
            )
        })?;
        crate::vm::guest::connect(rec, limit).map_err(|e| vm_logs(from_diag(e), self.rec.as_ref()))
    }

    /// Run a timed operation that updates the VM record (plug, unplug): the record is
    /// lent to `op` and put back whatever the outcome.
    fn with_record<T>(
        &mut self,
        step: Step,
        limit: Duration,
        op: impl AsyncFnOnce(&mut VmRecord) -> T,
    ) -> Result<T, StepFailure> {
        let mut rec = self
            .rec
            .take()
            .ok_or_else(|| fail(Exit::Infrastructure, "no VM"))?;
        let r = self.timed(step, limit, Exit::OperationFailed, op(&mut rec));
        self.rec = Some(rec);
        r
    }

    /// Devices already in the VM when it booted (cold-plugged): their QEMU id and guest
    /// BDF, from the VM record.
    fn note_cold_plugged(&mut self) {
        for d in &mut self.devices {
            if let Some(p) = self
                .rec
                .as_ref()
                .and_then(|r| r.plugged.iter().find(|p| p.gpu == d.gpu.label()))
            {
                d.id = Some(p.id.clone());
                d.guest_bdf = p.guest_bdf.clone();
            }
        }
    }

    fn keep_logs(&self) {
        if let Some(r) = &self.rec {
            for (src, name) in [
                (&r.serial_log, "serial.log"),
                (&r.qemu_stderr, "qemu.stderr"),
            ] {
                let _ = std::fs::copy(src, self.dir.join(name));
            }
        }
    }
}

impl LabBackend {
    /// The VM profile for a scenario's `vm-up`; the devices the VM gets go to
    /// `s.devices`, in port order.
    fn profile(
        &self,
        sc: &Scenario,
        s: &mut LabSession,
        limit: Duration,
    ) -> Result<Profile, StepFailure> {
        if sc.kind.is_nested() {
            // L1: the VFIO host for the nested guest; its own emulated devices are the
            // passed ones, so no devices of the plan go to this VM.
            s.devices.clear();
            return self.nested_profile(sc, limit);
        }
        let mut p = Profile {
            firmware: match sc.firmware {
                Firmware::Seabios => VmFirmware::Seabios,
                Firmware::Ovmf => VmFirmware::Ovmf,
            },
            cmdline: lab_cmdline(sc.vm.append.as_deref()),
            ..self.base_profile(sc, limit)?
        };
        place(sc, scenario_gpus(sc, &s.host_devices))?.apply(&mut p, &mut s.devices);
        Ok(p)
    }

    /// What every scenario's VM has: its name and size, the guest kernel and initramfs,
    /// QEMU, and the boot limit. Ready when the guest agent answers over vsock; plugs are
    /// confirmed by it.
    fn base_profile(&self, sc: &Scenario, limit: Duration) -> Result<Profile, StepFailure> {
        let (qemu, qemu_args) = self.qemu_for(sc)?;
        Ok(Profile {
            name: sc.name.clone(),
            vcpus: sc.vm.cpus,
            memory: sc.vm.memory.to_string(),
            kernel: Self::kernel_for(sc),
            initrd: Some(self.initrd(sc)?),
            qemu,
            qemu_args,
            ready: Ready::Agent,
            boot_timeout: limit.as_secs().max(1),
            ..Profile::default()
        })
    }

    /// The nested scenario's L1 guest: an emulated IOMMU and its own passed device (see
    /// [`nested`]).
    fn nested_profile(&self, sc: &Scenario, limit: Duration) -> Result<Profile, StepFailure> {
        let mut p = Profile {
            cmdline: nested::l1_cmdline(sc.vm.append.as_deref()),
            // L1 runs its script through the agent's exec (the image allows it too).
            agent_exec: true,
            // The lab is TCG (docs/LAB.md fact 7): QEMU 10 with -cpu host passes the KVM
            // probe on these machines, but its guests never boot.
            accel: if sc.kind.required_stack().is_some() {
                AccelChoice::Tcg
            } else {
                Profile::default().accel
            },
            ..self.base_profile(sc, limit)?
        };
        p.qemu_args.extend(match sc.kind {
            Kind::Passthrough | Kind::Nested => nested::l1_qemu_args(),
            Kind::Sriov => shared_lab::sriov_l1_qemu_args(),
            Kind::Mdev | Kind::Iommufd => shared_lab::modern_l1_qemu_args(),
        });
        Ok(p)
    }
}

/// How to get a missing guest kernel (pure): vfioctl's own builds are named
/// `vfioctl-[<series>-]<flavours>` (`vfioctl kernel build`), the others come from setup.
pub fn kernel_hint(path: &Path) -> String {
    let dir = path
        .parent()
        .and_then(|p| p.file_name())
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let Some(key) = dir.strip_prefix("vfioctl-") else {
        return "the Debian guest kernels come from scripts/setup (6.1) and scripts/setup --modern (6.12)".into();
    };
    let (series, flavours) = match key.split_once('-') {
        Some((s, f)) if s.contains('.') => (Some(s), f),
        _ => (None, key),
    };
    let mut cmd = "vfioctl kernel build".to_string();
    if let Some(s) = series {
        cmd.push_str(&format!(" --series {s}"));
    }
    if flavours != "base" {
        cmd.push_str(&format!(" --flavour {}", flavours.replace('+', ",")));
    }
    format!("build it with `{cmd}`")
}

/// The lab guest's kernel command line: the serial console, no reboot loop after a
/// panic, then the plan's `vm.append`.
fn lab_cmdline(append: Option<&str>) -> String {
    format!(
        "console=ttyS0 panic=-1{}",
        append.map(|a| format!(" {a}")).unwrap_or_default()
    )
}

/// The devices a scenario gives its VM: its emulated stand-ins in plan order, then the
/// host devices its `check` step resolved.
fn scenario_gpus(sc: &Scenario, host: &[HostDevice]) -> Vec<GpuSpec> {
    let mut gpus: Vec<GpuSpec> = Vec::new();
    for d in &sc.devices {
        match d {
            DeviceSpec::Emulated { bar } => gpus.push(GpuSpec::Emulated { size: bar.0 }),
            DeviceSpec::Host { .. } => {}
        }
    }
    gpus.extend(host.iter().map(|h| GpuSpec::Vfio { bdf: h.bdf }));
    gpus
}

/// Where a scenario's devices go: devices with a port sized for them first (ports
/// rp0..), then devices meant for a spare port without any reserve (the negative
/// control). The VM module orders its ports the same way.
#[derive(Debug)]
struct Placement {
    /// Each device with the profile entry that sizes (and, cold, plugs) its port.
    sized: Vec<(GpuSpec, DeviceEntry)>,
    /// Devices hot-plugged into a spare port with no reserve.
    spare: Vec<GpuSpec>,
}

/// Place `gpus` after the scenario's `vm.pref64_reserve` and plug mode (pure). A reserve
/// other than `auto` needs hot plug: cold-plugged devices get ports sized for them.
fn place(sc: &Scenario, gpus: Vec<GpuSpec>) -> Result<Placement, StepFailure> {
    let hot = sc.plug == PlugMode::Hot;
    let mut sized: Vec<(GpuSpec, DeviceEntry)> = Vec::new();
    let mut spare: Vec<GpuSpec> = Vec::new();
    for g in gpus {
        match (sc.vm.pref64_reserve, hot) {
            (Reserve::Auto, _) => {
                let plug = if hot { PlugWhen::Port } else { PlugWhen::Cold };
                sized.push((g.clone(), DeviceEntry { gpu: g.label(), plug }));
            }
            // A port sized as for an n-byte BAR.
            (Reserve::Size(n), true) => sized.push((
                g,
                DeviceEntry {
                    gpu: format!("emulated:{n}"),
                    plug: PlugWhen::Port,
                },
            )),
            (Reserve::None, true) => spare.push(g),
            (_, false) => {
                return Err(fail(
                    Exit::Usage,
                    format!("scenario {}: vm.pref64_reserve other than auto needs plug = \"hot\" (cold-plugged devices get ports sized for them)", sc.name),
                ))
            }
        }
    }
    Ok(Placement { sized, spare })
}

impl Placement {
    /// Give the profile its port entries and number the devices by port, sized ports
    /// first; `devices` is replaced.
    fn apply(self, p: &mut Profile, devices: &mut Vec<VmDevice>) {
        devices.clear();
        for (g, e) in self.sized {
            p.devices.push(e);
            devices.push(VmDevice {
                gpu: g,
                port: p.devices.len() - 1,
                id: None,
                guest_bdf: None,
            });
        }
        let n = p.devices.len();
        for (k, g) in self.spare.into_iter().enumerate() {
            devices.push(VmDevice {
                gpu: g,
                port: n + k,
                id: None,
                guest_bdf: None,
            });
        }
        p.gpu_ports = devices.len();
    }
}

/// What a step returns: an optional one-line note for the report.
type StepResult = Result<Option<String>, StepFailure>;

/// The steps, one function each; [`Backend::step`] dispatches to them.
impl LabBackend {
    /// QEMU on PATH, the guest kernel and initramfs, and the scenario's host devices.
    fn check(&self, s: &mut LabSession, ctx: &StepCtx) -> StepResult {
        let sc = ctx.scenario;
        let (qemu, _) = self.qemu_for(sc)?;
        let qemu = which(&qemu).ok_or_else(|| {
            let mut f = fail(
                Exit::Infrastructure,
                format!("{} not found on PATH", qemu.display()),
            );
            f.hint = Some("install qemu-system-x86 (scripts/setup does)".into());
            f
        })?;
        let kernel = Self::kernel_for(sc).ok_or_else(|| {
            fail(
                Exit::Usage,
                "no guest kernel: set `kernel` in the plan or run scripts/setup",
            )
        })?;
        for (key, p) in [("kernel", Some(&kernel)), ("initrd", sc.initrd.as_ref())] {
            if let Some(p) = p {
                if !p.is_file() {
                    let mut f = fail(
                        Exit::Usage,
                        format!("scenario {}: {key} {} does not exist", sc.name, p.display()),
                    );
                    if key == "kernel" {
                        f.hint = Some(kernel_hint(p));
                    }
                    return Err(f);
                }
            }
        }
        if sc.kind.is_nested() {
            self.prepare_nested(sc, &kernel, ctx.dir)?;
        }
        self.initrd(sc)?;
        s.host_devices =
            resolve(&self.ctx.root, sc).map_err(|e| fail(Exit::Usage, e.to_string()))?;
        Ok(Some(format!(
            "qemu {}; kernel {}; {} host device(s)",
            qemu.display(),
            kernel.display(),
            s.host_devices.len()
        )))
    }

    /// The bind flow of `vfioctl bind` (plan, in-use check, steps, rollback).
    fn bind(&self, s: &mut LabSession, ctx: &StepCtx) -> StepResult {
        let root = &self.ctx.root;
        let sel: Vec<vfioctl_common::Selector> = s
            .host_devices
            .iter()
            .map(|d| vfioctl_common::Selector::Bdf { bdf: d.bdf })
            .collect();
        let prepared = bind::prepare(
            root,
            &sel,
            bind::PrepareOptions {
                timeout: ctx.timeout,
                ..Default::default()
            },
        )
        .map_err(from_diag)?;
        let report = bind::execute(&prepared).map_err(from_diag)?;
        s.bound = report.devices.iter().map(|d| d.bdf).collect();
        Ok(Some(format!(
            "bound {} ({})",
            s.bound
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            report.group_nodes.join(", ")
        )))
    }

    /// Give the devices this scenario bound back to their drivers.
    fn restore(&self, s: &mut LabSession, ctx: &StepCtx) -> StepResult {
        if s.bound.is_empty() {
            return Ok(Some("nothing bound".into()));
        }
        let r =
            bind::restore(&self.ctx.root, Some(&s.bound), ctx.timeout, false).map_err(from_diag)?;
        let failed: Vec<String> = r
            .devices
            .iter()
            .filter_map(|d| d.error.as_ref().map(|e| format!("{}: {e}", d.bdf)))
            .collect();
        if !failed.is_empty() {
            return Err(fail(Exit::OperationFailed, failed.join("; ")));
        }
        s.bound.clear();
        Ok(Some(format!("restored {} device(s)", r.devices.len())))
    }

    /// Boot the VM, then wait for readiness from the guest: the agent answers.
    fn vm_up(&self, s: &mut LabSession, ctx: &StepCtx) -> StepResult {
        let started = std::time::Instant::now();
        let profile = self.profile(ctx.scenario, s, ctx.timeout)?;
        let env = Env {
            root: self.ctx.root.clone(),
            base: self.run_base.clone(),
        };
        s.env = Some(env.clone());
        let retried = boot(s, &env, &profile, ctx)?;
        let left = ctx
            .timeout
            .saturating_sub(started.elapsed())
            .max(Duration::from_secs(1));
        let mut client = s.agent(left)?;
        let hello = client
            .hello()
            .map_err(|e| vm_logs(from_diag(e), s.rec.as_ref()))?;
        s.hello = Some(hello.clone());
        let rec = s.rec.as_ref().map(|r| (r.accel, r.boot_seconds));
        s.note_cold_plugged();
        Ok(Some(format!(
            "{}, agent {} answered; console ready after {:.1} s{}",
            rec.map(|r| r.0.to_string())
                .unwrap_or_else(|| "accelerator unknown".into()),
            hello.agent_version,
            rec.and_then(|r| r.1).unwrap_or_default(),
            retried
                .map(|w| format!("; retried once after: {w}"))
                .unwrap_or_default()
        )))
    }

    /// Hot-plug every device over QMP, each on its port.
    fn plug(&self, s: &mut LabSession, ctx: &StepCtx) -> StepResult {
        let step = Step::Plug;
        let (Some(env), Some(rec)) = (s.env.clone(), s.rec.as_ref()) else {
            return Err(fail(Exit::Infrastructure, "plug without a VM"));
        };
        let sock = rec.qmp_socket.clone();
        let qmp = s
            .timed(
                step,
                ctx.timeout,
                Exit::OperationFailed,
                Qmp::connect(&sock, Duration::from_secs(10)),
            )?
            .map_err(|e| fail(Exit::Infrastructure, format!("QMP {}: {e}", sock.display())))?;
        let mut notes = Vec::new();
        let devices = s.devices.clone();
        for (i, d) in devices.iter().enumerate() {
            let port = s
                .rec
                .as_ref()
                .and_then(|r| r.ports.get(d.port))
                .map(|p| p.id.clone());
            let r = s.with_record(step, ctx.timeout, async |rec: &mut VmRecord| {
                plug::plug(&env, rec, &qmp, &d.gpu, port.as_deref()).await
            });
            let c = r?.map_err(|e| {
                let mut f = from_diag(e);
                f.logs.push(LogExcerpt {
                    source: "qmp".into(),
                    text: f.message.clone(),
                });
                vm_logs(f, s.rec.as_ref())
            })?;
            let id = s
                .rec
                .as_ref()
                .and_then(|r| r.plugged.last())
                .map(|p| p.id.clone());
            s.devices[i].id = id;
            s.devices[i].guest_bdf = Some(c.guest_bdf.clone());
            notes.push(format!(
                "{} on {} -> guest {} in {:.2} s{}",
                d.gpu.label(),
                port.unwrap_or_default(),
                c.guest_bdf,
                c.seconds,
                if c.evidence.above_4g() {
                    ", BAR above 4 GiB"
                } else {
                    ""
                }
            ));
        }
        s.qmp = Some(qmp);
        Ok(Some(notes.join("; ")))
    }

    /// Nested kinds: in L1, the kind's script (bind or create, L2 cold and hot, restore;
    /// see `nested` and `shared::lab`), judged from what L1 and L2 printed.
    fn validate_nested(&self, s: &mut LabSession, ctx: &StepCtx) -> StepResult {
        let mut client = s.agent(ctx.timeout)?;
        // Each L2 run inside L1 (cold, then hot) may take what the step has left; the
        // step's own limit bounds them together.
        let l2 = ctx.timeout.as_secs().saturating_sub(30).max(60);
        let kind = ctx.scenario.kind;
        let script = match kind {
            Kind::Passthrough | Kind::Nested => nested::l1_script(l2),
            Kind::Sriov => shared_lab::sriov_l1_script(l2),
            Kind::Mdev => shared_lab::mdev_l1_script(l2),
            Kind::Iommufd => shared_lab::iommufd_l1_script(l2),
        };
        let reply = client
            .exec(&["/bin/busybox", "sh", "-c", &script], ctx.timeout, 1 << 20)
            .map_err(|e| vm_logs(from_diag(e), s.rec.as_ref()))?;
        let _ = std::fs::write(s.dir.join("nested.log"), &reply.stdout);
        let verdict = match kind {
            Kind::Passthrough | Kind::Nested => nested::verdict(&reply.stdout),
            Kind::Sriov => shared_lab::sriov_verdict(&reply.stdout),
            Kind::Mdev => shared_lab::mdev_verdict(&reply.stdout),
            Kind::Iommufd => shared_lab::iommufd_verdict(&reply.stdout),
        };
        verdict.map(Some).map_err(|why| {
            fail(Exit::ValidationFailed, why.reason)
                .with_log(excerpt("l1-exec", &reply.stdout, 60))
                .with_log(excerpt("l1-exec-stderr", &reply.stderr, 20))
        })
    }

    /// The guest checks of `vfioctl validate` for every device; the first device with a
    /// failed check fails the step.
    fn validate(&self, s: &mut LabSession, ctx: &StepCtx) -> StepResult {
        let mut client = s.agent(ctx.timeout)?;
        let mut notes = Vec::new();
        for d in &s.devices {
            let mut exp = self.expected(&d.gpu)?;
            exp.guest_bdf = d.guest_bdf.as_deref().and_then(|b| b.parse().ok());
            let view = validate::collect(&mut client, Some(&exp), Duration::from_secs(10))
                .map_err(|e| vm_logs(from_diag(e), s.rec.as_ref()))?;
            let checks = validate::evaluate(Some(&exp), &view);
            let failed: Vec<_> = checks
                .iter()
                .filter(|c| c.verdict == Verdict::Fail)
                .collect();
            if !failed.is_empty() {
                return Err(validation_failure(&exp, &failed, &view));
            }
            notes.push(format!("{}: {} checks passed", exp.label, checks.len()));
        }
        Ok(Some(notes.join("; ")))
    }

    /// What the guest should see of a device.
    fn expected(&self, gpu: &GpuSpec) -> Result<Expected, StepFailure> {
        Ok(match gpu {
            GpuSpec::Emulated { size } => Expected::emulated(*size),
            GpuSpec::Vfio { bdf } => {
                validate::expected_from_host(&self.ctx.root, *bdf).map_err(from_diag)?
            }
            GpuSpec::Mdev { uuid } => {
                crate::shared::mdev::expected(&self.ctx.root, uuid).ok_or_else(|| {
                    fail(
                        Exit::ValidationFailed,
                        format!("mdev:{uuid}: its type's guest PCI ids are not known to vfioctl (only the kernel samples mtty, mdpy, mbochs)"),
                    )
                })?
            }
        })
    }

    /// Hot-unplug every plugged device; DEVICE_DELETED confirms each.
    fn unplug(&self, s: &mut LabSession, ctx: &StepCtx) -> StepResult {
        let (Some(env), Some(qmp)) = (s.env.clone(), s.qmp.take()) else {
            return Ok(Some("nothing plugged".into()));
        };
        let mut done = Vec::new();
        let ids: Vec<String> = s.devices.iter().filter_map(|d| d.id.clone()).collect();
        for id in ids {
            let r = s.with_record(Step::Unplug, ctx.timeout, async |rec: &mut VmRecord| {
                plug::unplug(&env, rec, &qmp, &id).await
            });
            let secs = r?.map_err(|e| vm_logs(from_diag(e), s.rec.as_ref()))?;
            done.push(format!("{id} in {secs:.2} s"));
        }
        s.qmp = Some(qmp);
        Ok(Some(format!("DEVICE_DELETED: {}", done.join(", "))))
    }

    /// Keep the VM's logs, then stop it.
    fn vm_down(&self, s: &mut LabSession, ctx: &StepCtx) -> StepResult {
        s.keep_logs();
        s.qmp = None;
        let Some(env) = s.env.clone() else {
            return Ok(Some("no VM was started".into()));
        };
        let name = VmName::new(&ctx.scenario.name).map_err(from_diag)?;
        let r = s
            .timed(
                Step::VmDown,
                ctx.timeout,
                Exit::Infrastructure,
                lifecycle::down(&env, &name, Duration::ZERO),
            )?
            .map_err(from_diag)?;
        Ok(Some(r.steps.join("; ")))
    }
}

/// Start the VM; one retry when a helper died before the guest even started (seen with
/// vhost-device-vsock when several VMs start at once). Returns what the retry was for,
/// for the step's note.
fn boot(
    s: &mut LabSession,
    env: &Env,
    profile: &Profile,
    ctx: &StepCtx,
) -> Result<Option<String>, StepFailure> {
    let name = &ctx.scenario.name;
    let mut retried = None;
    loop {
        let r = s.timed(
            Step::VmUp,
            ctx.timeout,
            Exit::BootTimeout,
            // SIGINT/SIGTERM: vm up kills what it started itself.
            lifecycle::up_until(env, profile, crate::interrupt::wait()),
        )?;
        match r {
            Ok(rec) => {
                s.rec = Some(rec);
                return Ok(retried);
            }
            Err(e @ VmError::HelperDied { .. }) if retried.is_none() => {
                retried = Some(e.to_string().lines().next().unwrap_or_default().to_string());
                if let Ok(n) = VmName::new(name) {
                    let _ = s.block_on(lifecycle::down(env, &n, Duration::ZERO));
                }
            }
            Err(e) => {
                // Keep the failed VM's record for logs and for vm-down.
                s.rec = VmName::new(name)
                    .ok()
                    .and_then(|n| lifecycle::load(env, &n).ok());
                return Err(vm_logs(from_diag(e), s.rec.as_ref()));
            }
        }
    }
}

/// A failed validation: the failed checks in the message, their evidence and the
/// guest's dmesg as logs.
fn validation_failure(
    exp: &Expected,
    failed: &[&CheckOutcome],
    view: &validate::GuestView,
) -> StepFailure {
    let msg = failed
        .iter()
        .map(|c| format!("{}: {}", c.name, c.detail))
        .collect::<Vec<_>>()
        .join("; ");
    let dmesg = view
        .klog
        .records
        .iter()
        .map(|r| r.text.as_str())
        .collect::<Vec<_>>()
        .join("\n");
    let evidence = failed
        .iter()
        .flat_map(|c| c.evidence.iter().cloned())
        .collect::<Vec<_>>()
        .join("\n");
    fail(Exit::ValidationFailed, format!("{}: {msg}", exp.label))
        .with_log(LogExcerpt {
            source: "evidence".into(),
            text: evidence,
        })
        .with_log(excerpt("dmesg", &dmesg, 40))
}

impl Backend for LabBackend {
    type Session = LabSession;

    fn skip_reason(&self, sc: &Scenario) -> Option<String> {
        resolve(&self.ctx.root, sc).err().map(|e| e.to_string())
    }

    fn keys(&self, sc: &Scenario) -> BTreeSet<String> {
        match resolve(&self.ctx.root, sc) {
            Ok(d) => keys_for(&d),
            // Unknown: serialize with every other host-device scenario.
            Err(_) => BTreeSet::from(["host-devices".to_string()]),
        }
    }

    fn session(&self, _sc: &Scenario, dir: &Path) -> LabSession {
        LabSession {
            dir: dir.to_path_buf(),
            host_devices: Vec::new(),
            bound: Vec::new(),
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok(),
            env: None,
            rec: None,
            qmp: None,
            devices: Vec::new(),
            hello: None,
        }
    }

    fn step(&self, s: &mut LabSession, step: Step, ctx: &StepCtx) -> StepResult {
        match step {
            Step::Check => self.check(s, ctx),
            Step::Bind => self.bind(s, ctx),
            Step::Restore => self.restore(s, ctx),
            Step::VmUp => self.vm_up(s, ctx),
            Step::Plug => self.plug(s, ctx),
            Step::Validate if ctx.scenario.kind.is_nested() => self.validate_nested(s, ctx),
            Step::Validate => self.validate(s, ctx),
            Step::Unplug => self.unplug(s, ctx),
            Step::VmDown => self.vm_down(s, ctx),
        }
    }

    fn stack(&self, s: &LabSession) -> std::collections::BTreeMap<String, String> {
        let mut m = std::collections::BTreeMap::new();
        if let Some(r) = &s.rec {
            m.insert("accelerator".into(), r.accel.to_string());
            if let Some(q) = &r.qemu_version {
                m.insert("qemu".into(), q.clone());
            }
            m.insert(
                "firmware".into(),
                format!("{:?}", r.firmware).to_lowercase(),
            );
            if let Some(g) = &r.guest {
                m.insert("guest-kernel".into(), g.kernel.clone());
                m.insert("agent".into(), g.agent_version.clone());
            }
        }
        if let Some(h) = &s.hello {
            m.insert("guest-kernel".into(), h.kernel.clone());
            m.insert("agent".into(), h.agent_version.clone());
        }
        m
    }

    fn leftovers(&self, s: &mut LabSession) -> Vec<String> {
        let mut v = Vec::new();
        if let Some(rec) = &s.rec {
            for (pid, marker) in lifecycle::processes(rec) {
                if process::alive(pid, &marker) {
                    v.push(format!("process {pid} ({marker}) still running"));
                }
            }
            if rec.run_dir.exists() {
                v.push(format!(
                    "VM runtime directory {} still there",
                    rec.run_dir.display()
                ));
            }
        }
        if !s.bound.is_empty() {
            v.push(format!(
                "devices still bound by this run: {}",
                s.bound
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        let _ = std::fs::remove_dir(&self.run_base);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_prefer_iommu_groups() {
        let d = [
            HostDevice {
                bdf: "0000:41:00.0".parse().unwrap(),
                group: Some(12),
            },
            HostDevice {
                bdf: "0000:41:00.1".parse().unwrap(),
                group: Some(12),
            },
            HostDevice {
                bdf: "0000:81:00.0".parse().unwrap(),
                group: None,
            },
        ];
        assert_eq!(
            keys_for(&d).into_iter().collect::<Vec<_>>(),
            ["iommu-group:12", "pci:0000:81:00.0"]
        );
    }

    fn scenario(extra: &str) -> Scenario {
        let text = format!(
            "[[scenario]]\nname = \"a\"\ndevices = [\"emulated:8G\", \"0000:41:00.0\"]\n{extra}"
        );
        let mut plan = Plan::parse(&text, Path::new("/p/lab.toml"), &|_| None).unwrap();
        plan.scenarios.remove(0)
    }

    /// (profile entries as `gpu plug`, device labels with their port, port count).
    fn placed(sc: &Scenario) -> (Vec<String>, Vec<String>, usize) {
        let host = [HostDevice {
            bdf: "0000:41:00.0".parse().unwrap(),
            group: Some(12),
        }];
        let mut p = Profile::default();
        let mut devices = Vec::new();
        place(sc, scenario_gpus(sc, &host))
            .unwrap()
            .apply(&mut p, &mut devices);
        (
            p.devices
                .iter()
                .map(|e| format!("{} {:?}", e.gpu, e.plug))
                .collect(),
            devices
                .iter()
                .map(|d| format!("{} rp{}", d.gpu.label(), d.port))
                .collect(),
            p.gpu_ports,
        )
    }

    #[test]
    fn devices_get_sized_ports_first_then_spare_ones() {
        let both = ["emulated:8G rp0", "0000:41:00.0 rp1"];
        assert_eq!(
            placed(&scenario("")),
            (
                vec!["emulated:8G Port".into(), "0000:41:00.0 Port".into()],
                both.map(String::from).to_vec(),
                2
            )
        );
        assert_eq!(
            placed(&scenario("plug = \"cold\"\n")).0,
            ["emulated:8G Cold", "0000:41:00.0 Cold"]
        );
        assert_eq!(
            placed(&scenario("vm = { pref64_reserve = \"16G\" }\n")).0,
            ["emulated:16G Port", "emulated:16G Port"]
        );
        assert_eq!(
            placed(&scenario("vm = { pref64_reserve = \"none\" }\n")),
            (vec![], both.map(String::from).to_vec(), 2)
        );
        let cold_none = scenario("plug = \"cold\"\nvm = { pref64_reserve = \"none\" }\n");
        let e = place(&cold_none, scenario_gpus(&cold_none, &[])).unwrap_err();
        assert_eq!(e.exit_code, Exit::Usage.code());
        assert!(
            e.message
                .starts_with("scenario a: vm.pref64_reserve other than auto needs plug = \"hot\""),
            "{}",
            e.message
        );
        assert_eq!(lab_cmdline(Some("quiet")), "console=ttyS0 panic=-1 quiet");
        assert_eq!(lab_cmdline(None), "console=ttyS0 panic=-1");
    }

    #[test]
    fn a_missing_kernel_names_the_build_that_makes_it() {
        let h = |p: &str| kernel_hint(Path::new(p));
        assert_eq!(
            h("/lab/kernel/vfioctl-6.12-vfio-guest+vfio-host/vmlinuz"),
            "build it with `vfioctl kernel build --series 6.12 --flavour vfio-guest,vfio-host`"
        );
        assert_eq!(
            h("/lab/kernel/vfioctl-base/vmlinuz"),
            "build it with `vfioctl kernel build`"
        );
        assert_eq!(
            h("/lab/kernel/vfioctl-nvidia+debug/vmlinuz"),
            "build it with `vfioctl kernel build --flavour nvidia,debug`"
        );
        assert!(h("/lab/kernel/modern/vmlinuz").contains("scripts/setup --modern"));
    }
}
