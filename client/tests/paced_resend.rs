//! Publishes still waiting for the pacer when a connection drops were never written: the
//! client sends them on the next session, once, in order (acknowledged there, when they ask).
//! Acknowledged ones written and left unanswered fail with `ConnectionLost` (delivery is at
//! most once: they may or may not have been published). Against a fake WebSocket server that
//! announces a low command rate and drops the first connection after reading a few publishes.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{command, connect, send, welcome};
use quiver_client::ClientError;
use quiver_proto::{Command, Event, DEFAULT_MAX_FRAME};
use tokio::net::TcpListener;

mod common;

/// Publishes made at once: far more than the pacer's burst.
const PUBLISHES: usize = 60;
/// Publishes the first connection reads before it drops (the first [`ANSWERED`] answered).
const READ_FIRST: usize = 5;
const ANSWERED: usize = 3;

/// The payloads of the `Publish` commands each connection read, in order.
type Seen = Arc<Mutex<Vec<Vec<String>>>>;

/// A server that welcomes with 20 commands a second; its first connection answers
/// [`ANSWERED`] publishes, reads [`READ_FIRST`], and drops; later ones answer every command.
async fn server() -> anyhow::Result<(u16, Seen)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let seen = Seen::default();
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                let Some((id, Command::Hello { .. })) = command(&mut ws).await else {
                    return;
                };
                let index = {
                    let mut log = log.lock().unwrap();
                    log.push(Vec::new());
                    log.len() - 1
                };
                let welcome = welcome(DEFAULT_MAX_FRAME as u32, 20, None);
                if !send(&mut ws, id, welcome).await {
                    return;
                }
                while let Some((id, cmd)) = command(&mut ws).await {
                    let reply = match cmd {
                        Command::Publish { payload, ack, .. } => {
                            let read = {
                                let mut log = log.lock().unwrap();
                                let mine = &mut log[index];
                                mine.push(String::from_utf8_lossy(&payload).into_owned());
                                mine.len()
                            };
                            if index == 0 && read >= READ_FIRST {
                                return; // dropped: no goodbye, no close frame
                            }
                            if !ack || (index == 0 && read > ANSWERED) {
                                continue;
                            }
                            Event::Published { position: None }
                        }
                        Command::Ping => Event::Pong,
                        _ => continue,
                    };
                    if !send(&mut ws, id, reply).await {
                        return;
                    }
                }
            });
        }
    });
    Ok((port, seen))
}

/// No publish read twice, and the first connection read [`READ_FIRST`].
fn each_once(seen: &[Vec<String>]) {
    assert!(seen.len() >= 2, "the client reconnected: {seen:?}");
    assert_eq!(seen[0].len(), READ_FIRST, "{seen:?}");
    let mut all: Vec<&String> = seen.iter().flatten().collect();
    let count = all.len();
    all.sort();
    all.dedup();
    assert_eq!(count, all.len(), "a publish written twice: {seen:?}");
}

#[tokio::test]
async fn acknowledged_publishes_never_written_before_a_drop_are_sent_on_the_next_session(
) -> anyhow::Result<()> {
    let (port, seen) = server().await?;
    let client = Arc::new(connect(port).await?);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..PUBLISHES {
        let client = client.clone();
        tasks.spawn(async move { (i, client.publish_ack("r", format!("m{i}")).await) });
    }
    let mut acked = Vec::new();
    let mut lost = Vec::new();
    // Most of the 60 at 19 a second on the second session: a few seconds.
    while let Some(done) = tokio::time::timeout(Duration::from_secs(30), tasks.join_next())
        .await
        .map_err(|_| anyhow::anyhow!("the publishes were not settled within 30 s"))?
    {
        match done? {
            (i, Ok(_)) => acked.push(format!("m{i}")),
            (i, Err(ClientError::ConnectionLost)) => lost.push(format!("m{i}")),
            (i, Err(e)) => anyhow::bail!("m{i}: {e}"),
        }
    }
    // The pacer's burst (10) went out at once, and a few more at 19 a second until the drop:
    // everything behind them was never written, and went out on the next session. Without
    // that, every publish past the three answered failed.
    assert!(
        acked.len() >= PUBLISHES / 2,
        "{} acknowledged, {} lost: {lost:?}",
        acked.len(),
        lost.len()
    );
    let seen = seen.lock().unwrap().clone();
    each_once(&seen);
    let all: Vec<&String> = seen.iter().flatten().collect();
    // Each acknowledged one was read (and answered) by a server; none that failed was sent again.
    for m in &acked {
        assert!(all.contains(&m), "{m} acknowledged, never read");
    }
    for m in &lost {
        assert!(
            !seen[1..].iter().flatten().any(|s| s == m),
            "{m} failed, yet sent again"
        );
    }
    assert_eq!(acked.len() + lost.len(), PUBLISHES);
    Ok(())
}

/// The same for publishes without acknowledgement: those the writer never took go out on the
/// next session, in order, once; those written before the drop are not sent again.
#[tokio::test]
async fn publishes_never_written_before_a_drop_are_sent_on_the_next_session() -> anyhow::Result<()>
{
    let (port, seen) = server().await?;
    let client = connect(port).await?;
    for i in 0..PUBLISHES {
        client.publish("r", format!("m{i}")).await?;
    }
    let last = format!("m{}", PUBLISHES - 1);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !seen
        .lock()
        .unwrap()
        .iter()
        .skip(1)
        .flatten()
        .any(|m| *m == last)
    {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "{last} never reached a later session: {:?}",
            seen.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let seen = seen.lock().unwrap().clone();
    each_once(&seen);
    let later: Vec<usize> = seen[1..]
        .iter()
        .flatten()
        .map(|m| m[1..].parse())
        .collect::<Result<_, _>>()?;
    assert!(later.len() >= PUBLISHES / 2, "{seen:?}");
    assert!(
        later.windows(2).all(|w| w[0] < w[1]),
        "out of order: {later:?}"
    );
    Ok(())
}
