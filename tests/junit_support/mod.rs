//! Every JUnit file a test produces goes through [`assert_valid_junit`]: the Jenkins
//! schema (`tests/data/junit/junit-10.xsd`, see its ORIGIN.md) checked by a real validator
//! (`xmllint --schema`, Debian `libxml2-utils`, installed by scripts/setup), then read
//! back by a second consumer (roxmltree) that checks what a CI reporter relies on.
#![allow(dead_code)]

use std::path::Path;
use std::process::Command;

/// What the second reader found.
#[derive(Debug, Default)]
pub struct Read {
    pub tests: usize,
    pub failures: usize,
    pub errors: usize,
    pub skipped: usize,
    /// `(name, failure or error message)` of every failed case, line breaks kept.
    pub messages: Vec<(String, String)>,
    pub case_names: Vec<String>,
}

/// xmllint, from Debian's libxml2-utils (scripts/setup installs it).
pub fn xmllint() -> Result<std::path::PathBuf, vfioctl_testkit::Missing> {
    vfioctl_testkit::prereq::program("xmllint", vfioctl_testkit::prereq::SETUP)
}

pub fn xsd() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/junit/junit-10.xsd")
}

/// Validate `path` with xmllint against the Jenkins schema and read it back.
///
/// Without xmllint the schema half is skipped through the testkit's prerequisite
/// mechanism (a loud skip line; a failure under `VFIOCTL_REQUIRE_LAB=1`) and the second
/// reader still runs.
pub fn assert_valid_junit(path: &Path) -> Read {
    let text = std::fs::read_to_string(path).unwrap();
    if let Err(m) = xmllint() {
        vfioctl_testkit::skip(&vfioctl_testkit::prereq::test_name(module_path!()), &m);
        return read(&text);
    }
    let out = Command::new("xmllint")
        .arg("--noout")
        .arg("--schema")
        .arg(xsd())
        .arg(path)
        .output()
        .unwrap_or_else(|e| {
            panic!("xmllint (Debian libxml2-utils, installed by scripts/setup) is needed: {e}")
        });
    assert!(
        out.status.success(),
        "{} fails junit-10.xsd:\n{}\n{text}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    read(&text)
}

fn num(n: roxmltree::Node, a: &str) -> usize {
    n.attribute(a)
        .unwrap_or_else(|| panic!("<{}> without {a}", n.tag_name().name()))
        .parse()
        .unwrap()
}

/// The second consumer: counts add up, every case has a time, timestamps are
/// xs:dateTime, properties only on suites.
pub fn read(text: &str) -> Read {
    let doc = roxmltree::Document::parse(text).expect("well-formed XML");
    let root = doc.root_element();
    assert_eq!(root.tag_name().name(), "testsuites");
    let mut r = Read::default();
    for suite in root.children().filter(|n| n.has_tag_name("testsuite")) {
        let cases: Vec<_> = suite
            .children()
            .filter(|n| n.has_tag_name("testcase"))
            .collect();
        let has = |c: &roxmltree::Node, t: &str| c.children().any(|n| n.has_tag_name(t));
        assert_eq!(num(suite, "tests"), cases.len());
        assert_eq!(
            num(suite, "failures"),
            cases.iter().filter(|c| has(c, "failure")).count()
        );
        assert_eq!(
            num(suite, "errors"),
            cases.iter().filter(|c| has(c, "error")).count()
        );
        assert_eq!(
            num(suite, "skipped"),
            cases.iter().filter(|c| has(c, "skipped")).count()
        );
        if let Some(ts) = suite.attribute("timestamp") {
            let b = ts.as_bytes();
            let ok = b.len() == 19
                && [4, 7].iter().all(|&i| b[i] == b'-')
                && b[10] == b'T'
                && [13, 16].iter().all(|&i| b[i] == b':')
                && b.iter()
                    .enumerate()
                    .all(|(i, c)| [4, 7, 10, 13, 16].contains(&i) || c.is_ascii_digit());
            assert!(ok, "timestamp {ts:?} is not an xs:dateTime");
        }
        for c in &cases {
            let name = c.attribute("name").unwrap().to_string();
            let t: f64 = c
                .attribute("time")
                .unwrap_or_else(|| panic!("testcase {name} has no time"))
                .parse()
                .unwrap();
            assert!(t >= 0.0);
            assert!(!has(c, "properties"), "properties inside testcase {name}");
            for n in c
                .children()
                .filter(|n| n.has_tag_name("failure") || n.has_tag_name("error"))
            {
                r.messages
                    .push((name.clone(), n.attribute("message").unwrap_or("").into()));
            }
            r.case_names.push(name);
        }
        r.tests += cases.len();
        r.failures += num(suite, "failures");
        r.errors += num(suite, "errors");
        r.skipped += num(suite, "skipped");
    }
    assert_eq!(num(root, "tests"), r.tests);
    assert_eq!(num(root, "failures"), r.failures);
    assert_eq!(num(root, "errors"), r.errors);
    assert!(root.attribute("skipped").is_none());
    r
}
