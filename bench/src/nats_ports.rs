//! nats-server's own choice of port. Started with `-p -1 --ports_file_dir DIR`, nats-server
//! binds a free port itself and, once it listens, writes `DIR/<executable>_<pid>.ports`
//! (`{"nats":["nats://127.0.0.1:P"]}`). Picking a port here and releasing it for nats-server
//! to bind would race every other socket on the machine, and a readiness probe could then
//! reach another program.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Waits (bounded by `within`) for the ports file of nats-server `child` in `dir` and returns
/// its client port; fails at once if the child exits first.
pub fn wait(dir: &Path, child: &mut std::process::Child, within: Duration) -> Result<u16> {
    let suffix = format!("_{}.ports", child.id());
    let deadline = Instant::now() + within;
    loop {
        for entry in std::fs::read_dir(dir).with_context(|| format!("{}", dir.display()))? {
            let path = entry?.path();
            if !path.to_string_lossy().ends_with(&suffix) {
                continue;
            }
            // A file still being written does not parse yet: look again on the next pass.
            if let Ok(ports) = serde_json::from_slice::<serde_json::Value>(&std::fs::read(&path)?) {
                return ports["nats"][0]
                    .as_str()
                    .and_then(|url| url.rsplit_once(':'))
                    .and_then(|(_, p)| p.parse().ok())
                    .with_context(|| format!("no client port in {ports}"));
            }
        }
        if let Some(status) = child.try_wait()? {
            bail!("nats-server exited at start ({status})");
        }
        if Instant::now() > deadline {
            bail!("nats-server wrote no ports file within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
