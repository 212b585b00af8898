//! What people expect of a command line: help on every option, shell completions that
//! parse, man pages, `-q`, no colour codes in logs that go to files, and durations
//! rounded for people.

use std::path::Path;
use std::process::Command;

fn vfioctl() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vfioctl"));
    c.env_remove("RUST_LOG");
    c
}

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

#[test]
fn every_option_and_argument_has_help_text() {
    fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
        for a in cmd.get_arguments() {
            let id = a.get_id().as_str();
            if id == "help" || id == "version" {
                continue;
            }
            if a.get_help().is_none() && a.get_long_help().is_none() {
                missing.push(format!("{path} {id}"));
            }
        }
        for s in cmd.get_subcommands() {
            if s.get_about().is_none() && s.get_name() != "help" {
                missing.push(format!("{path} {} (subcommand)", s.get_name()));
            }
            walk(s, &format!("{path} {}", s.get_name()), missing);
        }
    }
    let mut cmd = vfioctl::cli::command();
    cmd.build();
    let mut missing = Vec::new();
    walk(&cmd, "vfioctl", &mut missing);
    assert!(missing.is_empty(), "no help text: {missing:#?}");
}

#[test]
fn bash_completion_parses_and_others_are_generated() {
    let out = vfioctl().args(["completions", "bash"]).output().unwrap();
    assert!(out.status.success());
    let script = String::from_utf8(out.stdout).unwrap();
    assert!(script.contains("complete -F") && script.contains("vfioctl"));
    // `vfioctl completions bash | bash -n`
    let mut bash = Command::new("bash")
        .arg("-n")
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    bash.stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let r = bash.wait_with_output().unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    for (shell, marker) in [("zsh", "#compdef vfioctl"), ("fish", "complete -c vfioctl")] {
        let out = vfioctl().args(["completions", shell]).output().unwrap();
        assert!(out.status.success(), "{shell}");
        let s = String::from_utf8(out.stdout).unwrap();
        assert!(s.contains(marker), "{shell}: {s}");
        // Subcommands and their options are completed.
        assert!(s.contains("regress") && s.contains("dry-run"), "{shell}");
    }
    if Command::new("zsh").arg("--version").output().is_ok() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("_vfioctl");
        let out = vfioctl().args(["completions", "zsh"]).output().unwrap();
        std::fs::write(&f, out.stdout).unwrap();
        let r = Command::new("zsh").arg("-n").arg(&f).output().unwrap();
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    }
}

#[test]
fn man_pages_for_every_subcommand() {
    let d = tempfile::tempdir().unwrap();
    let out = vfioctl().arg("man").arg(d.path()).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    for page in [
        "vfioctl.1",
        "vfioctl-check.1",
        "vfioctl-vm-up.1",
        "vfioctl-regress.1",
        "vfioctl-kata.1",
    ] {
        let p = d.path().join(page);
        let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(text.starts_with(".ie") || text.contains(".TH"), "{page}");
    }
    let vm_up = std::fs::read_to_string(d.path().join("vfioctl-vm-up.1")).unwrap();
    assert!(vm_up.contains("dry"), "{vm_up}");
    // `man -l` renders it where man is installed.
    if Command::new("man").arg("--version").output().is_ok() {
        let r = Command::new("man")
            .arg("-l")
            .arg(d.path().join("vfioctl-check.1"))
            .env("MANPAGER", "cat")
            .env("MANWIDTH", "80")
            .output()
            .unwrap();
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        assert!(String::from_utf8_lossy(&r.stdout).contains("vfioctl"));
    }
    // Without DIR: vfioctl(1) on stdout.
    let out = vfioctl().arg("man").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains(".TH vfioctl"));
}

#[test]
fn quiet_prints_errors_only_and_keeps_stdout_and_exit() {
    let root = fixture("gpu-server");
    let loud = vfioctl()
        .arg("--root")
        .arg(&root)
        .args(["-vv", "check"])
        .output()
        .unwrap();
    let quiet = vfioctl()
        .arg("--root")
        .arg(&root)
        .args(["-q", "check"])
        .output()
        .unwrap();
    assert_eq!(loud.status.code(), quiet.status.code());
    assert_eq!(loud.stdout, quiet.stdout);
    assert!(
        quiet.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&quiet.stderr)
    );
    // An error still shows.
    let bad = vfioctl()
        .args(["-q", "devices", "nonsense:::"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).starts_with("error:"));
    // -q and -v contradict each other.
    let both = vfioctl().args(["-q", "-v", "devices"]).output().unwrap();
    assert_eq!(both.status.code(), Some(2));
}

#[test]
fn verbose_check_explains_its_verdicts_without_colour_codes() {
    let out = vfioctl()
        .arg("--root")
        .arg(fixture("gpu-server"))
        .args(["-v", "check"])
        .env_remove("NO_COLOR")
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    // stderr is a pipe here: no ANSI escape codes.
    assert!(!log.contains('\u{1b}'), "{log}");
    // What was read and what was concluded, per decision.
    for needle in ["/proc/cmdline", "iommu", "vfio"] {
        assert!(
            log.to_lowercase().contains(needle),
            "-v check does not mention {needle}:\n{log}"
        );
    }
    assert!(log.lines().count() >= 8, "{log}");
}

#[test]
fn colour_only_at_a_terminal_and_never_with_no_color() {
    use std::ffi::OsStr;
    use vfioctl::cli::stderr_color;
    assert!(stderr_color(true, None));
    assert!(!stderr_color(false, None));
    assert!(!stderr_color(true, Some(OsStr::new("1"))));
    assert!(stderr_color(true, Some(OsStr::new(""))));
}

#[test]
fn vm_up_dry_run_prints_a_command_a_shell_reads_back_exactly() {
    let d = tempfile::tempdir().unwrap();
    let tricky = "console=ttyS0 quiet x='$HOME' y=\"a b\" `true` ; z=*";
    let args = |json: bool| {
        let mut c = vfioctl();
        c.env("XDG_RUNTIME_DIR", d.path()).args([
            "vm",
            "up",
            "--dry-run",
            "--kernel",
            "/bin/sh",
            "--cmdline",
            tricky,
        ]);
        if json {
            c.arg("--json");
        }
        c.output().unwrap()
    };
    let j: serde_json::Value = serde_json::from_slice(&args(true).stdout).unwrap();
    let want: Vec<String> = j["argv"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    assert!(want.iter().any(|a| a.contains(tricky)), "{want:?}");
    let text = String::from_utf8(args(false).stdout).unwrap();
    let cmd = text
        .lines()
        .skip_while(|l| !l.contains("qemu-system"))
        .collect::<Vec<_>>()
        .join("\n");
    // bash reads the printed command back: one NUL-terminated word per argument.
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!("set -- {cmd}\nprintf '%s\\0' \"$@\""))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .split_terminator('\0')
        .map(str::to_string)
        .collect();
    assert_eq!(got, want, "printed:\n{cmd}");
}
