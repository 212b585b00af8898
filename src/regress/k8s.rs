//! Fleet runs on Kubernetes: one Job per GPU node, built from the typed API structs of
//! `k8s-openapi` (API version 1.33, the crate's earliest; Job, ConfigMap and the pod
//! fields used here are stable since 1.26), serialized as JSON documents (a YAML stream
//! whose documents are JSON, which kubectl and every YAML 1.2 reader take).
//!
//! Each Job sees the node, not a container's view of it:
//! - it is pinned to its node by required node affinity on `kubernetes.io/hostname`, and
//!   tolerates the `nvidia.com/gpu` taint GPU nodes usually carry;
//! - `hostPID` and `hostNetwork`: bind's in-use checks read the node's processes (open
//!   device files), mounts and routes through `/proc`, which in a pod's own namespaces
//!   would show only the pod;
//! - privileged (it binds devices and starts QEMU);
//! - hostPath mounts, each at the same path: `/sys` (binding goes through sysfs), `/dev`
//!   (VFIO group nodes and `/dev/kvm` appear *after* the container started, which a
//!   container's own `/dev` snapshot does not show), `/run/udev` (device database),
//!   `/lib/modules` (read-only, for modprobe of vfio-pci), the lab cache (kernel, images;
//!   `VFIOCTL_LAB` is set to it), `/var/lib/vfioctl` (the bind ledger, so a later
//!   `vfioctl restore` on the node can undo a crashed pod's bindings) and the results;
//! - reads the plan, unexpanded, from a ConfigMap emitted alongside: `${VAR}`s in it are
//!   resolved by vfioctl in the pod, on the node, never on the machine that emits;
//! - writes `RESULTS/<node>/latest` and accumulates `RESULTS/<node>/history`, which
//!   `vfioctl regress collect` merges;
//! - maps vfioctl's exit codes to Job policy: a finding (exit 1-7, regression is 5)
//!   fails the Job at once, an infrastructure error (8) is retried once.

use std::collections::BTreeMap;
use std::path::PathBuf;

use k8s_openapi::api::batch::v1::{
    Job, JobSpec, PodFailurePolicy, PodFailurePolicyOnExitCodesRequirement, PodFailurePolicyRule,
};
use k8s_openapi::api::core::v1::{
    Affinity, ConfigMap, ConfigMapVolumeSource, Container, EnvVar, EnvVarSource,
    HostPathVolumeSource, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm,
    ObjectFieldSelector, PodSpec, PodTemplateSpec, SecurityContext, Toleration, Volume,
    VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use sha2::{Digest, Sha256};

use super::plan::Plan;

/// What the manifests need besides the plan.
#[derive(Clone, Debug)]
pub struct FleetOpts {
    /// The nodes to run on: one Job per node.
    pub nodes: Vec<String>,
    /// A container image with vfioctl, QEMU and the guest artefacts.
    pub image: String,
    /// A vfioctl binary on the host to run instead of the image's (hostPath mount).
    pub binary: Option<PathBuf>,
    /// The objects' namespace (None: left to `kubectl`'s current namespace).
    pub namespace: Option<String>,
    /// Results directory on each node.
    pub host_results: PathBuf,
    /// The lab cache on each node (guest kernels, images): mounted at the same path and
    /// exported as `VFIOCTL_LAB` in the pod.
    pub host_lab: PathBuf,
    /// `--jobs` for the `vfioctl regress` each Job runs.
    pub jobs: usize,
}

/// The image when neither the command line nor the plan names one.
pub const DEFAULT_IMAGE: &str = "localhost/vfioctl:latest";
/// The default results directory on each node.
pub const DEFAULT_HOST_RESULTS: &str = "/var/lib/vfioctl/regress";
/// The default lab cache on each node.
pub const DEFAULT_HOST_LAB: &str = "/var/cache/vfioctl/lab";

/// Variables the Jobs define for the plan (`${VAR}` is expanded in the pod).
pub const JOB_VARIABLES: &[&str] = &["VFIOCTL_LAB", "VFIOCTL_NODE", "HOME"];

/// The `${VAR}` names a plan text uses, sorted, each once.
pub fn plan_variables(text: &str) -> Vec<String> {
    let mut v = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("${") {
        rest = &rest[i + 2..];
        if let Some(end) = rest.find('}') {
            let name = &rest[..end];
            if !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                v.push(name.to_string());
            }
            rest = &rest[end..];
        }
    }
    v.sort();
    v.dedup();
    v
}

/// A DNS-1123 label from any text: lower-case alphanumerics and '-', at most `max`
/// characters; shortened names get a hash suffix so two long names stay distinct.
pub fn dns_label(s: &str, max: usize) -> String {
    let mut o: String = s
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    while o.contains("--") {
        o = o.replace("--", "-");
    }
    let o = o.trim_matches('-').to_string();
    if o.len() <= max && !o.is_empty() {
        return o;
    }
    let h = Sha256::digest(s.as_bytes());
    let suffix = format!("{:02x}{:02x}{:02x}", h[0], h[1], h[2]);
    let keep = max.saturating_sub(suffix.len() + 1);
    let head = o[..o.len().min(keep)].trim_end_matches('-');
    if head.is_empty() {
        suffix
    } else {
        format!("{head}-{suffix}")
    }
}

fn labels(plan: &Plan, node: Option<&str>) -> BTreeMap<String, String> {
    let mut l = BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), "vfioctl".to_string()),
        ("app.kubernetes.io/component".into(), "regress".into()),
        ("vfioctl.dev/plan".into(), dns_label(&plan.name, 63)),
    ]);
    if let Some(n) = node {
        l.insert("vfioctl.dev/node".into(), dns_label(n, 63));
    }
    l
}

fn host_path(name: &str, path: &str, kind: &str) -> Volume {
    Volume {
        name: name.into(),
        host_path: Some(HostPathVolumeSource {
            path: path.into(),
            type_: Some(kind.into()),
        }),
        ..Volume::default()
    }
}

fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: read_only.then_some(true),
        ..VolumeMount::default()
    }
}

/// The name of the ConfigMap that carries the plan (`vfioctl-regress-<plan>-plan`, a DNS label).
pub fn config_map_name(plan: &Plan) -> String {
    dns_label(&format!("vfioctl-regress-{}-plan", plan.name), 63)
}

/// The ConfigMap that carries the plan text.
pub fn config_map(plan: &Plan, plan_text: &str, opts: &FleetOpts) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(config_map_name(plan)),
            namespace: opts.namespace.clone(),
            labels: Some(labels(plan, None)),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([(
            "plan.toml".to_string(),
            plan_text.to_string(),
        )])),
        ..ConfigMap::default()
    }
}

/// The Job for one node.
pub fn job(plan: &Plan, node: &str, opts: &FleetOpts) -> Job {
    let results = opts.host_results.join(dns_label(node, 63));
    let lab = opts.host_lab.to_string_lossy().into_owned();
    let mut volumes = vec![
        host_path("sys", "/sys", "Directory"),
        host_path("dev", "/dev", "Directory"),
        host_path("run-udev", "/run/udev", "DirectoryOrCreate"),
        host_path("lib-modules", "/lib/modules", "Directory"),
        host_path("lab", &lab, "DirectoryOrCreate"),
        host_path("state", "/var/lib/vfioctl", "DirectoryOrCreate"),
        host_path("results", &results.to_string_lossy(), "DirectoryOrCreate"),
        Volume {
            name: "plan".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: config_map_name(plan),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        },
    ];
    let mut mounts = vec![
        mount("sys", "/sys", false),
        mount("dev", "/dev", false),
        mount("run-udev", "/run/udev", false),
        mount("lib-modules", "/lib/modules", true),
        mount("lab", &lab, false),
        mount("state", "/var/lib/vfioctl", false),
        mount("results", "/results", false),
        mount("plan", "/etc/vfioctl/regress", true),
    ];
    let mut bin = "vfioctl".to_string();
    if let Some(b) = &opts.binary {
        volumes.push(host_path("vfioctl-bin", &b.to_string_lossy(), "File"));
        mounts.push(mount("vfioctl-bin", "/opt/vfioctl/bin/vfioctl", true));
        bin = "/opt/vfioctl/bin/vfioctl".into();
    }
    // Worst case: every scenario at every step limit, one at a time; plus slack.
    let deadline: u64 = plan
        .scenarios
        .iter()
        .map(|s| s.timeouts.total().as_secs())
        .sum::<u64>()
        + 600;
    let container = Container {
        name: "regress".into(),
        image: Some(opts.image.clone()),
        command: Some(vec![
            bin,
            "regress".into(),
            "/etc/vfioctl/regress/plan.toml".into(),
            "--jobs".into(),
            opts.jobs.to_string(),
            "--out".into(),
            "/results/latest".into(),
            "--history".into(),
            "/results/history".into(),
        ]),
        env: Some(vec![
            EnvVar {
                name: "VFIOCTL_NODE".into(),
                value_from: Some(EnvVarSource {
                    field_ref: Some(ObjectFieldSelector {
                        field_path: "spec.nodeName".into(),
                        ..ObjectFieldSelector::default()
                    }),
                    ..EnvVarSource::default()
                }),
                ..EnvVar::default()
            },
            EnvVar {
                name: "VFIOCTL_LAB".into(),
                value: Some(lab.clone()),
                ..EnvVar::default()
            },
            EnvVar {
                name: "HOME".into(),
                value: Some("/root".into()),
                ..EnvVar::default()
            },
        ]),
        security_context: Some(SecurityContext {
            privileged: Some(true),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(mounts),
        ..Container::default()
    };
    Job {
        metadata: ObjectMeta {
            name: Some(dns_label(
                &format!("vfioctl-regress-{}-{node}", plan.name),
                63,
            )),
            namespace: opts.namespace.clone(),
            labels: Some(labels(plan, Some(node))),
            ..ObjectMeta::default()
        },
        spec: Some(JobSpec {
            backoff_limit: Some(1),
            active_deadline_seconds: Some(deadline as i64),
            ttl_seconds_after_finished: Some(7 * 24 * 3600),
            pod_failure_policy: Some(PodFailurePolicy {
                rules: vec![PodFailurePolicyRule {
                    action: "FailJob".into(),
                    on_exit_codes: Some(PodFailurePolicyOnExitCodesRequirement {
                        container_name: Some("regress".into()),
                        operator: "In".into(),
                        values: vec![1, 2, 3, 4, 5, 6, 7],
                    }),
                    ..PodFailurePolicyRule::default()
                }],
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(plan, Some(node))),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    restart_policy: Some("Never".into()),
                    host_pid: Some(true),
                    host_network: Some(true),
                    dns_policy: Some("ClusterFirstWithHostNet".into()),
                    affinity: Some(Affinity {
                        node_affinity: Some(NodeAffinity {
                            required_during_scheduling_ignored_during_execution: Some(
                                NodeSelector {
                                    node_selector_terms: vec![NodeSelectorTerm {
                                        match_expressions: Some(vec![NodeSelectorRequirement {
                                            key: "kubernetes.io/hostname".into(),
                                            operator: "In".into(),
                                            values: Some(vec![node.to_string()]),
                                        }]),
                                        ..NodeSelectorTerm::default()
                                    }],
                                },
                            ),
                            ..NodeAffinity::default()
                        }),
                        ..Affinity::default()
                    }),
                    tolerations: Some(vec![Toleration {
                        key: Some("nvidia.com/gpu".into()),
                        operator: Some("Exists".into()),
                        effect: Some("NoSchedule".into()),
                        ..Toleration::default()
                    }]),
                    containers: vec![container],
                    volumes: Some(volumes),
                    ..PodSpec::default()
                }),
            },
            ..JobSpec::default()
        }),
        ..Job::default()
    }
}

/// One object as a pretty JSON document.
pub fn to_json<T: serde::Serialize>(object: &T) -> Result<String, serde_json::Error> {
    serde_json::to_string_pretty(object)
}

/// Every object: the plan ConfigMap, then one Job per node, as JSON values.
pub fn objects(
    plan: &Plan,
    plan_text: &str,
    opts: &FleetOpts,
) -> Result<Vec<serde_json::Value>, serde_json::Error> {
    let mut v = vec![serde_json::to_value(config_map(plan, plan_text, opts))?];
    for n in &opts.nodes {
        v.push(serde_json::to_value(job(plan, n, opts))?);
    }
    Ok(v)
}

/// The whole stream: `---` then one JSON document per object (valid YAML; `kubectl apply
/// -f` takes it as it is).
pub fn manifests(
    plan: &Plan,
    plan_text: &str,
    opts: &FleetOpts,
) -> Result<String, serde_json::Error> {
    let mut out = String::new();
    for o in objects(plan, plan_text, opts)? {
        out.push_str("---\n");
        out.push_str(&serde_json::to_string_pretty(&o)?);
        out.push('\n');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const PLAN: &str = "name = \"lab\"\n[[scenario]]\nname = \"gpu-hot\"\ndevices = [\"class:gpu\"]\ntimeouts = { boot = 600 }\n";

    fn opts(nodes: &[&str]) -> FleetOpts {
        FleetOpts {
            nodes: nodes.iter().map(|s| s.to_string()).collect(),
            image: "registry.example/vfioctl:0.1.0".into(),
            binary: None,
            namespace: Some("gpu-lab".into()),
            host_results: DEFAULT_HOST_RESULTS.into(),
            host_lab: DEFAULT_HOST_LAB.into(),
            jobs: 2,
        }
    }

    #[test]
    fn manifests_for_two_nodes() {
        let plan = Plan::parse(PLAN, Path::new("lab.toml"), &|_| None).unwrap();
        let y = manifests(&plan, PLAN, &opts(&["gpu-node-a", "GPU_Node.B"])).unwrap();
        insta::assert_snapshot!(y);
        // Every document parses back as the typed object it claims to be.
        let docs: Vec<&str> = y.split("---\n").filter(|d| !d.is_empty()).collect();
        assert_eq!(docs.len(), 3);
        let _: ConfigMap = serde_json::from_str(docs[0]).unwrap();
        for d in &docs[1..] {
            let j: Job = serde_json::from_str(d).unwrap();
            let spec = j.spec.unwrap().template.spec.unwrap();
            assert_eq!((spec.host_pid, spec.host_network), (Some(true), Some(true)));
            let paths: Vec<&str> = spec
                .volumes
                .iter()
                .flatten()
                .filter_map(|v| v.host_path.as_ref().map(|h| h.path.as_str()))
                .collect();
            for p in [
                "/sys",
                "/dev",
                "/run/udev",
                "/lib/modules",
                DEFAULT_HOST_LAB,
            ] {
                assert!(paths.contains(&p), "{p} not mounted: {paths:?}");
            }
            let env = spec.containers[0].env.as_ref().unwrap();
            assert!(env
                .iter()
                .any(|e| e.name == "VFIOCTL_LAB" && e.value.as_deref() == Some(DEFAULT_HOST_LAB)));
            assert_eq!(
                spec.containers[0]
                    .security_context
                    .as_ref()
                    .unwrap()
                    .privileged,
                Some(true)
            );
        }
    }

    #[test]
    fn host_binary_is_mounted_and_used() {
        let plan = Plan::parse(PLAN, Path::new("lab.toml"), &|_| None).unwrap();
        let mut o = opts(&["n1"]);
        o.binary = Some("/usr/local/bin/vfioctl".into());
        let j = job(&plan, "n1", &o);
        let spec = j.spec.unwrap().template.spec.unwrap();
        assert_eq!(
            spec.containers[0].command.as_ref().unwrap()[0],
            "/opt/vfioctl/bin/vfioctl"
        );
        assert!(spec.volumes.unwrap().iter().any(|v| v
            .host_path
            .as_ref()
            .is_some_and(|h| h.path == "/usr/local/bin/vfioctl")));
    }

    #[test]
    fn plan_variables_are_listed_once() {
        assert_eq!(
            plan_variables(
                "k = \"${VFIOCTL_LAB}/k\"\ni = \"${VFIOCTL_LAB}/i ${X_1} ${bad name} ${\""
            ),
            ["VFIOCTL_LAB", "X_1"]
        );
    }

    #[test]
    fn dns_labels() {
        assert_eq!(dns_label("GPU_Node.B", 63), "gpu-node-b");
        let long = "x".repeat(100);
        let l = dns_label(&long, 63);
        assert!(l.len() <= 63 && l.starts_with("xxx"), "{l}");
        assert_ne!(
            dns_label(&format!("{long}a"), 63),
            dns_label(&format!("{long}b"), 63)
        );
        assert_eq!(dns_label("--", 63).len(), 6);
    }
}
