//! The `vfioctl devices` / `vfioctl check` examples in docs/commands/devices-check.md (section
//! `devices-check`) are run against the fixtures, so they cannot rot.
//!
//! A ```console block starts with `$ vfioctl ARGS` (optionally `# exit N`); the lines
//! after it must appear in the real output in that order, `...` standing for any number
//! of lines. A block without `...` must match exactly.

use std::path::Path;
use std::process::Command;

struct Example {
    args: Vec<String>,
    exit: i32,
    expected: Vec<String>,
}

fn examples() -> Vec<Example> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("docs/commands/devices-check.md")).unwrap();
    let start = readme
        .find("<!-- section: devices-check -->")
        .expect("README section marker");
    let rest = &readme[start + 1..];
    let section = &rest[..rest.find("<!-- section:").unwrap_or(rest.len())];
    let mut out = Vec::new();
    let mut lines = section.lines();
    while let Some(l) = lines.next() {
        if l.trim() != "```console" {
            continue;
        }
        let cmd = lines.next().expect("command line");
        let cmd = cmd.strip_prefix("$ vfioctl ").expect("`$ vfioctl ...`");
        let (cmd, exit) = match cmd.split_once("# exit ") {
            Some((c, e)) => (c, e.trim().parse().unwrap()),
            None => (cmd, 0),
        };
        let expected = lines
            .by_ref()
            .take_while(|l| l.trim() != "```")
            .map(String::from)
            .collect();
        out.push(Example {
            args: cmd.split_whitespace().map(String::from).collect(),
            exit,
            expected,
        });
    }
    out
}

#[test]
fn readme_examples_run() {
    let all = examples();
    assert!(all.len() >= 4, "found {} examples", all.len());
    for ex in all {
        let out = Command::new(env!("CARGO_BIN_EXE_vfioctl"))
            .args(&ex.args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env_remove("VFIOCTL_ROOT")
            .output()
            .unwrap();
        let stdout = String::from_utf8(out.stdout).unwrap();
        assert_eq!(
            out.status.code(),
            Some(ex.exit),
            "vfioctl {:?}: {stdout}{}",
            ex.args,
            String::from_utf8_lossy(&out.stderr)
        );
        let actual: Vec<&str> = stdout.lines().map(str::trim_end).collect();
        if !ex.expected.iter().any(|l| l == "...") {
            let want: Vec<&str> = ex.expected.iter().map(|l| l.trim_end()).collect();
            assert_eq!(actual, want, "vfioctl {:?}", ex.args);
            continue;
        }
        let mut at = 0;
        for want in ex.expected.iter().filter(|l| *l != "...") {
            let want = want.trim_end();
            match actual[at..].iter().position(|l| *l == want) {
                Some(i) => at += i + 1,
                None => panic!(
                    "vfioctl {:?}: README line not found (in order) in the output:\n{want}\n--- output ---\n{stdout}",
                    ex.args
                ),
            }
        }
    }
}
