//! WebSocket conformance: the Autobahn TestSuite fuzzingclient cases 1-7 and 9, and the
//! permessage-deflate cases 12 and 13, run by the PyPI package `kosoku` against the echo
//! endpoint of the real binary.

use std::process::{Command, Stdio};

use crate::harness::BinaryNode;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autobahn_cases_1_to_7_and_9_pass_against_the_echo_endpoint() {
    assert!(
        runs("kosoku", &["--help"]),
        "`kosoku` is not installed: install it with `pip install kosoku` (tests/run.sh does)"
    );
    let mut kosoku = tokio::process::Command::new("kosoku");
    for case in ["1.*", "2.*", "3.*", "4.*", "5.*", "6.*", "7.*", "9.*"] {
        kosoku.args(["-i", case]);
    }
    let stdout = run_against_echo(kosoku, "sb-autobahn").await;
    assert!(stdout.contains("cases passed"), "{stdout}");
}

/// Whether `program` with `args` runs and succeeds (quietly).
fn runs(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// Runs `kosoku` (with its cases chosen) against the echo endpoint of a fresh node, with
/// reports in a temporary directory named from `reports`; its stdout, once it passed.
async fn run_against_echo(mut kosoku: tokio::process::Command, reports: &str) -> String {
    let node = BinaryNode::start(&[], &[("SWITCHBOARD_SESSION__ECHO_PATH", "/echo")]).await;
    let reports = std::env::temp_dir().join(format!("{reports}-{}", std::process::id()));
    let output = kosoku
        .arg(format!("ws://{}/echo", node.ws_addr))
        .args(["-p", "2", "-o"])
        .arg(&reports)
        .output()
        .await
        .unwrap();
    let _ = std::fs::remove_dir_all(&reports);
    drop(node);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "Autobahn cases failed:\n{stderr}\n{stdout}"
    );
    stdout
}

/// The compression cases (RFC 7692): 12.* sends five corpora (JSON, text, HTML, a bitmap,
/// a PDF) compressed with the default offer, 13.* the same with each of the offers a client
/// may make (`server_no_context_takeover`, `server_max_window_bits` 8-15, several offers
/// at once); the echo endpoint inflates them and sends them back compressed. Every data set
/// and every offer runs here with messages of up to 32 KiB, whole and fragmented (132
/// cases, about a minute); `SWITCHBOARD_AUTOBAHN_FULL=1` adds the 64 and 128 KiB ones
/// (216 cases, about four minutes), as `docs/protocol.md` shows them run.
///
/// kosoku 0.1.0 hands these cases' `onMessage` a `str` where they hash `bytes`, so they
/// are run through `tests/conformance/autobahn_deflate.py`, which gives them the bytes and
/// changes nothing else (its doc says why).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autobahn_compression_cases_12_and_13_pass_against_the_echo_endpoint() {
    assert!(
        runs("python3", &["-c", "import kosoku"]),
        "`kosoku` is not importable by python3: install it with `pip install kosoku` (tests/run.sh does)"
    );
    let runner = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/conformance/autobahn_deflate.py"
    );
    let mut kosoku = tokio::process::Command::new("python3");
    kosoku.arg(runner);
    let full = std::env::var_os("SWITCHBOARD_AUTOBAHN_FULL").is_some();
    // Subcases 9, 10 and 14-18 send 64 and 128 KiB messages.
    let subcases: Vec<u32> = if full {
        (1..=18).collect()
    } else {
        (1..=8).chain(11..=13).collect()
    };
    // 12 has five data sets, 13 seven offers; ids named exactly (kosoku's `*` also
    // matches `12.1.1` for `12.1.1*`).
    for (group, sets) in [(12, 5), (13, 7)] {
        for set in 1..=sets {
            for subcase in &subcases {
                kosoku.args(["-i", &format!("{group}.{set}.{subcase}")]);
            }
        }
    }
    let stdout = run_against_echo(kosoku, "sb-autobahn-deflate").await;
    let expected = if full {
        "216 cases passed"
    } else {
        "132 cases passed"
    };
    assert!(stdout.contains(expected), "{stdout}");
}
