//! The JavaScript/TypeScript client (`clients/js`): built with its TypeScript compiler, then
//! its tests (Node's test runner) run against real server processes of this build: the
//! `switchboard` binary and `redis-server`.

use std::{
    process::Command,
    sync::{Mutex, PoisonError},
};

/// Held while a test builds `dist/` or runs what it built: `npm pack` builds it again
/// (`prepack`), and Node loading `dist/index.js` while `tsc` rewrites it fails at random.
static DIST: Mutex<()> = Mutex::new(());

#[test]
fn the_javascript_client_passes_its_tests_against_the_real_server() {
    let _dist = DIST.lock().unwrap_or_else(PoisonError::into_inner);
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/clients/js");
    assert!(
        std::path::Path::new(dir)
            .join("node_modules/typescript")
            .exists(),
        "the client's build tools are needed: `npm ci` in clients/js (tests/run.sh does it)"
    );
    let build = Command::new("npm")
        .current_dir(dir)
        .args(["run", "--silent", "build"])
        .output()
        .expect("npm runs (apt-get install npm)");
    assert!(
        build.status.success(),
        "tsc failed:\n{}{}",
        String::from_utf8_lossy(&build.stdout),
        String::from_utf8_lossy(&build.stderr)
    );
    // The demo serves the client from the binary (src/demo/switchboard.js): it must be
    // this build's output.
    let built = std::fs::read_to_string(format!("{dir}/dist/index.js")).unwrap();
    let served = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/src/demo/switchboard.js"
    ))
    .unwrap();
    assert!(
        built == served,
        "src/demo/switchboard.js is stale: copy clients/js/dist/index.js there after `npm run build`"
    );
    // Bounded: a hung test must fail the suite, not stall it.
    let tests = Command::new("timeout")
        .current_dir(dir)
        .args(["--kill-after=10", "300", "npm", "test", "--silent"])
        .env("SWITCHBOARD_BIN", env!("CARGO_BIN_EXE_switchboard"))
        .output()
        .expect("npm runs");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&tests.stdout),
        String::from_utf8_lossy(&tests.stderr)
    );
    assert!(tests.status.success(), "clients/js tests failed:\n{report}");
    assert!(report.contains("# fail 0"), "{report}");
}

/// `npm pack` makes a package a team can install from the tarball (or the repository
/// path): the built module, its types, the README and the manifest, nothing else.
#[test]
fn the_javascript_client_packs_into_an_installable_tarball() {
    let _dist = DIST.lock().unwrap_or_else(PoisonError::into_inner);
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/clients/js");
    let pack = Command::new("npm")
        .current_dir(dir)
        .args(["pack", "--dry-run", "--json", "--silent"])
        .output()
        .expect("npm runs (apt-get install npm)");
    assert!(
        pack.status.success(),
        "{}",
        String::from_utf8_lossy(&pack.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&pack.stdout).unwrap();
    let mut files: Vec<&str> = report[0]["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|file| file["path"].as_str().unwrap())
        .collect();
    files.sort_unstable();
    for needed in [
        "README.md",
        "dist/index.d.ts",
        "dist/index.js",
        "package.json",
    ] {
        assert!(files.contains(&needed), "{files:?}");
    }
    assert!(
        files
            .iter()
            .all(|file| file.starts_with("dist/") || !file.contains('/')),
        "only the build output and the top-level files: {files:?}"
    );
}
