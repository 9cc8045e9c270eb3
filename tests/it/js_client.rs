//! The JavaScript/TypeScript client (`clients/js`): built with its TypeScript compiler, then
//! its tests (Node's test runner) run against real server processes of this build: the
//! `switchboard` binary and `redis-server`.

use std::process::Command;

#[test]
fn the_javascript_client_passes_its_tests_against_the_real_server() {
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
