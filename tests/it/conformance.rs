//! WebSocket conformance: the Autobahn TestSuite fuzzingclient cases 1-7 and 9, run by the
//! PyPI package `kosoku`, against the echo endpoint of the real binary.

use std::process::{Command, Stdio};

use crate::harness::BinaryNode;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autobahn_cases_1_to_7_and_9_pass_against_the_echo_endpoint() {
    let kosoku_found = Command::new("kosoku")
        .arg("--help")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    assert!(
        kosoku_found,
        "`kosoku` is not installed: install it with `pip install kosoku` (tests/run.sh does)"
    );
    let node = BinaryNode::start(&[], &[("SWITCHBOARD_SESSION__ECHO_PATH", "/echo")]).await;
    let reports = std::env::temp_dir().join(format!("sb-autobahn-{}", std::process::id()));
    let mut kosoku = tokio::process::Command::new("kosoku");
    kosoku.arg(format!("ws://{}/echo", node.ws_addr));
    for case in ["1.*", "2.*", "3.*", "4.*", "5.*", "6.*", "7.*", "9.*"] {
        kosoku.args(["-i", case]);
    }
    let output = kosoku
        .args(["-p", "2", "-o"])
        .arg(&reports)
        .output()
        .await
        .unwrap();
    let _ = std::fs::remove_dir_all(&reports);
    drop(node);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "Autobahn cases failed:\n{stderr}\n{stdout}"
    );
    assert!(stdout.contains("cases passed"), "{stdout}");
}
