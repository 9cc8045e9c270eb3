//! The Python client (`clients/python`): its pytest suite runs, in the venv `tests/run.sh`
//! makes, against real server processes of this build's `switchboard` binary.

use std::{path::PathBuf, process::Command};

/// The venv `tests/run.sh` makes: `$SWITCHBOARD_VENV`, or `~/.cache/switchboard-venv`.
pub(crate) fn venv() -> PathBuf {
    match std::env::var_os("SWITCHBOARD_VENV") {
        Some(venv) => PathBuf::from(venv),
        None => PathBuf::from(std::env::var_os("HOME").expect("HOME is set"))
            .join(".cache/switchboard-venv"),
    }
}

/// True when pytest's closing line (`-q`) is "N passed in ..." with N > 0 and nothing but
/// warnings beside it: no failure, error, skip or deselection.
fn all_passed(report: &str) -> bool {
    let Some(last) = report.lines().rev().find(|line| !line.trim().is_empty()) else {
        return false;
    };
    let Some((counts, _duration)) = last.trim().split_once(" in ") else {
        return false;
    };
    let mut passed = 0;
    for count in counts.split(", ") {
        match count.split_once(' ') {
            Some((n, "passed")) => passed = n.parse::<u32>().unwrap_or(0),
            Some((_, "warning" | "warnings")) => {}
            _ => return false,
        }
    }
    passed > 0
}

#[test]
fn the_python_client_passes_its_tests_against_the_real_server() {
    let python = venv().join("bin/python");
    assert!(
        python.exists(),
        "the Python client's venv is missing ({} not found): run tests/run.sh, which makes it \
         (or set SWITCHBOARD_VENV to a venv with `pip install -e 'clients/python[test]'`)",
        python.display()
    );
    // Bounded: a hung test must fail the suite, not stall it.
    let tests = Command::new("timeout")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["--kill-after=10", "300"])
        .arg(&python)
        .args([
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "clients/python/tests",
        ])
        .env("SWITCHBOARD_BIN", env!("CARGO_BIN_EXE_switchboard"))
        .output()
        .expect("timeout runs (coreutils)");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&tests.stdout),
        String::from_utf8_lossy(&tests.stderr)
    );
    assert!(
        tests.status.success(),
        "clients/python tests failed:\n{report}"
    );
    assert!(all_passed(&report), "not every test passed:\n{report}");
}

#[test]
fn only_a_report_of_passes_counts_as_all_passed() {
    assert!(all_passed("....\n22 passed in 3.02s\n"));
    assert!(all_passed("22 passed, 1 warning in 3.02s"));
    assert!(!all_passed("21 passed, 1 skipped in 3.02s"));
    assert!(!all_passed("1 failed, 21 passed in 3.02s"));
    assert!(!all_passed("21 passed, 1 error in 3.02s"));
    assert!(!all_passed("no tests ran in 0.01s"));
    assert!(!all_passed(""));
}
