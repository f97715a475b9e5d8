//! `quiver config check` shows the backend's URL without its query, where a backend that takes
//! no header may have been given its credential (outside audit 105, F4: it was printed whole),
//! as a key set's URL is shown without its query and a NATS URL without its user info.

use anyhow::Result;
use quiver_tests::process::quiver_command;

#[test]
fn config_check_shows_no_credential_of_a_url() -> Result<()> {
    let dir = tempfile::tempdir()?;
    std::fs::write(
        dir.path().join("q.toml"),
        "[rpc]\nurl = \"http://10.0.0.2:9000/quiver?key=do-not-print-1\"\n\
         [nats]\nurl = \"nats://alice:do-not-print-2@10.0.0.1:4222\"\n",
    )?;
    let out = quiver_command(dir.path())?
        .args(["config", "check", "q.toml"])
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains("calls and hooks: HTTP POST to http://10.0.0.2:9000/quiver\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("broker: NATS nats://***@10.0.0.1:4222"),
        "{stdout}"
    );
    assert!(!stdout.contains("do-not-print"), "{stdout}");
    assert!(!stderr.contains("do-not-print"), "{stderr}");
    Ok(())
}
