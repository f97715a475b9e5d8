//! `quiver pub`: publish one message, the same message --count times, or every line of stdin,
//! optionally at a --rate, each acknowledged by the server; or with --unreliable, each as a
//! QUIC datagram to a `latest` room, unacknowledged (PROTOCOL.md §10).

use std::time::Duration;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use clap::Args;
use futures::{Stream, StreamExt};
use tokio::io::{AsyncBufRead, AsyncBufReadExt};

use crate::conn::{fixed_token_expired, fixed_token_expired_error, ConnArgs};

/// Publishes awaiting their acks at once: enough to keep a link busy without letting a slow
/// server queue an unbounded number.
const IN_FLIGHT: usize = 64;

#[derive(Args)]
pub struct PubArgs {
    #[command(flatten)]
    conn: ConnArgs,
    /// The room to publish to (`chat.lobby`); the token's `publish` claim must allow it.
    room: String,
    /// The message; without it (or with `-`) every line read from stdin is one message (UTF-8,
    /// at most the server's limits.max_payload bytes); the first line that is not, like any
    /// other error, stops the run, and nothing after it is read or sent.
    /// `{seq}` in it is replaced by the message's number (1, 2, ...) with --count.
    message: Option<String>,
    /// Publish the message this many times.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    count: u64,
    /// Messages per second at most, from 0.00001 (about one a day) to 1000000 [default: as
    /// fast as the acks come back]
    #[arg(long)]
    rate: Option<f64>,
    /// Send each message as a QUIC datagram to a `latest` room: never acknowledged nor
    /// retransmitted, only the newest value counts (one too large for a datagram goes on the
    /// control stream instead). Needs WebTransport; the room's mode is checked first by
    /// subscribing to it briefly, when the token allows that.
    #[arg(long)]
    unreliable: bool,
}

pub async fn publish(args: PubArgs) -> Result<()> {
    let from_stdin = matches!(args.message.as_deref(), None | Some("-"));
    if from_stdin && args.count != 1 {
        bail!("--count repeats a message given on the command line, not stdin's lines");
    }
    let pause = args.rate.map(pause_for).transpose()?;
    let client = args.conn.connect().await?;
    let messages: std::pin::Pin<Box<dyn Stream<Item = Result<Bytes>>>> = match args.message {
        Some(message) if message != "-" => {
            let count = args.count;
            Box::pin(
                futures::stream::iter(1..=count)
                    .map(move |n| Ok(Bytes::from(message.replace("{seq}", &n.to_string())))),
            )
        }
        _ => {
            let limit = client
                .welcome()
                .map_or(DEFAULT_MAX_PAYLOAD, |w| w.limits.max_payload as usize);
            Box::pin(stdin_lines(
                tokio::io::BufReader::new(tokio::io::stdin()),
                limit,
            ))
        }
    };
    let messages = match pause {
        Some(pause) => {
            let mut ticks = tokio::time::interval(pause);
            // A stall (slow stdin, slow acks) is not made up for with a burst.
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            futures::stream::unfold((messages, ticks), |(mut messages, mut ticks)| async move {
                ticks.tick().await;
                let next = messages.next().await?;
                Some((next, (messages, ticks)))
            })
            .boxed_local()
        }
        None => messages,
    };
    if args.unreliable {
        let result = publish_unreliable(&client, &args.room, messages).await;
        client.close().await;
        return result;
    }
    let room = args.room.clone();
    let client_ref = &client;
    let mut acks = messages
        .map(|m| {
            let room = room.clone();
            async move {
                let message = m?;
                Ok(client_ref.publish_ack(&room, message).await)
            }
        })
        .buffered(IN_FLIGHT);
    let mut published = 0u64;
    // Acks the connection took with it: each message may or may not have been published. The
    // client reconnects (to the next `--url`), and the rest go on; the run still fails at the
    // end, since delivery is at most once and nothing is sent twice.
    let mut unknown = 0u64;
    let mut result = Ok(());
    let mut state = client.state();
    state.borrow_and_update();
    let fixed = args.conn.token_is_fixed();
    loop {
        let ack = tokio::select! {
            ack = acks.next() => match ack {
                Some(ack) => ack,
                None => break,
            },
            changed = state.changed() => {
                // A given token that expired stays expired: what waits would wait for a
                // reconnect that is refused every time, then time out (outside audit 26).
                if changed.is_ok() && fixed_token_expired(&state.borrow_and_update(), fixed) {
                    result = Err(fixed_token_expired_error()).with_context(|| {
                        format!("publish to {} (after {published} acknowledged)", args.room)
                    });
                    break;
                }
                continue;
            }
        };
        match ack {
            Ok(Ok(_)) => published += 1,
            Ok(Err(quiver_client::ClientError::ConnectionLost)) => {
                unknown += 1;
                if unknown == 1 {
                    tracing::warn!(
                        room = %args.room,
                        "connection lost before publishes were acknowledged: they may or may \
                         not have been published, and are not sent again; going on"
                    );
                }
            }
            Ok(Err(e)) => {
                result = Err(anyhow::Error::from(e)).with_context(|| {
                    format!("publish to {} (after {published} acknowledged)", args.room)
                });
                break;
            }
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    drop(acks);
    client.close().await;
    if published > 1 {
        eprintln!("quiver: published {published} messages to {}", args.room);
    }
    if unknown > 0 {
        let doubt = format!(
            "publish to {}: {unknown} message(s) lost their acknowledgement with the connection \
             and may or may not have been published ({published} acknowledged)",
            args.room
        );
        // Said whatever ends the run: another error ending it dropped the count (outside audit
        // 122, F7: a run ended `timed out`, not saying that a publish was in doubt).
        result = match result {
            Ok(()) => Err(anyhow::anyhow!(doubt)),
            Err(e) => Err(e.context(format!("{doubt}, and then the run ended"))),
        };
    }
    result
}

/// The server's default limits.max_payload, for a client that somehow has no `Welcome`.
const DEFAULT_MAX_PAYLOAD: usize = 60 * 1024;

/// The lines of `reader` (stdin), without their `\n` or `\r\n`, each at most `limit` bytes and
/// UTF-8. The stream ends with its first error: it kept reading after one, and `buffered`
/// published the lines after a line that was not UTF-8 while the run reported the failure
/// (outside audit 122, F2: 38 lines after the bad one were published).
fn stdin_lines(
    reader: impl AsyncBufRead + Unpin,
    limit: usize,
) -> impl Stream<Item = Result<Bytes>> {
    futures::stream::unfold(Some((reader, 1u64)), move |state| async move {
        let (mut reader, number) = state?;
        match read_line(&mut reader, limit).await {
            Ok(Some(line)) => Some((Ok(line), Some((reader, number + 1)))),
            Ok(None) => None,
            Err(e) => Some((
                Err(e.context(format!("reading stdin, line {number}"))),
                None,
            )),
        }
    })
}

/// One line, read no further than `limit` bytes (and a `\r`) into it: a line too long is
/// refused without holding the rest of it (outside audit 122, F3: one 300 MB line took 557 MB
/// before the client refused it). `None` at the end of the input.
async fn read_line(
    reader: &mut (impl AsyncBufRead + Unpin),
    limit: usize,
) -> Result<Option<Bytes>> {
    let too_long = || {
        anyhow::anyhow!(
            "longer than the server's limits.max_payload ({limit} bytes): refused, nothing after \
             it sent"
        )
    };
    let mut line = Vec::new();
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            if line.is_empty() {
                return Ok(None);
            }
            break;
        }
        let newline = available.iter().position(|&b| b == b'\n');
        let take = newline.unwrap_or(available.len());
        // `limit + 1`: room for the `\r` of a `\r\n`.
        if line.len() + take > limit + 1 {
            return Err(too_long());
        }
        line.extend_from_slice(&available[..take]);
        reader.consume(take + usize::from(newline.is_some()));
        if newline.is_some() {
            break;
        }
    }
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    if line.len() > limit {
        return Err(too_long());
    }
    if std::str::from_utf8(&line).is_err() {
        bail!("not UTF-8 text: refused, nothing after it sent");
    }
    Ok(Some(Bytes::from(line)))
}

/// The slowest and fastest `--rate`. Outside them the pause between messages is not one a
/// timer can keep: over 2^64 seconds `Duration` cannot hold it, and under a nanosecond it is
/// zero, which `tokio::time::interval` refuses with a panic (outside audit 111, F1: `--rate
/// 1e-20` and `--rate 1e10` exited 101). Within them: 100,000 s (about a day) between messages
/// at the slowest, 1 µs at the fastest, faster than acks come back anyway.
const MIN_RATE: f64 = 0.00001;
const MAX_RATE: f64 = 1_000_000.0;

/// The pause between two messages at `rate` per second; checked before connecting, like every
/// other flag.
fn pause_for(rate: f64) -> Result<Duration> {
    // `contains` is false for NaN as well.
    if !(MIN_RATE..=MAX_RATE).contains(&rate) {
        bail!(
            "--rate must be a number of messages per second from {MIN_RATE} to {MAX_RATE} \
             (without --rate, as fast as the acks come back)"
        );
    }
    Duration::try_from_secs_f64(1.0 / rate)
        .ok()
        .filter(|pause| !pause.is_zero())
        .ok_or_else(|| anyhow::anyhow!("--rate {rate}: no pause a timer can keep"))
}

/// Datagram publishing: what can be checked is checked before the first message, because
/// afterwards nothing comes back (the server drops a refused datagram without a word).
async fn publish_unreliable(
    client: &quiver_client::Client,
    room: &str,
    mut messages: impl Stream<Item = Result<Bytes>> + Unpin,
) -> Result<()> {
    use quiver_client::{ClientError, DeliveryMode, Transport};
    match client.transport() {
        Some(Transport::WebTransport) => {}
        other => bail!(
            "--unreliable needs QUIC datagrams, so a WebTransport session; this one runs over {}",
            other.map_or("nothing (not connected)".to_string(), |t| format!("{t:?}"))
        ),
    }
    match client.subscribe(room).await {
        Ok(sub) => {
            let mode = sub.mode();
            client.unsubscribe(room).await.ok();
            drop(sub);
            if mode != DeliveryMode::Latest {
                bail!(
                    "{room} is not in a `latest` namespace (it delivers {mode:?}): the server \
                     drops datagram publications to it; publish without --unreliable"
                );
            }
        }
        // Publishing may be allowed where subscribing is not: then the mode stays unknown.
        Err(ClientError::Server { code, message }) => tracing::warn!(
            code,
            %message,
            "cannot check that {room} is a `latest` room; datagrams to any other room are dropped"
        ),
        Err(e) => return Err(e).context("checking the room's mode"),
    }
    let mut sent = 0u64;
    let mut ended = Ok(());
    while let Some(message) = messages.next().await {
        let published = match message {
            Ok(message) => client
                .publish_unreliable(room, message)
                .await
                .with_context(|| format!("publish to {room} (after {sent} sent)")),
            Err(e) => Err(e),
        };
        if let Err(e) = published {
            ended = Err(e);
            break;
        }
        sent += 1;
    }
    // Values still waiting for the pacer (each room's newest) go first, then a ping's round
    // trip gives quinn time to send the queued datagrams, which closing would discard: on every
    // path, the values before a bad line included (review 127, R5: a bad stdin line returned
    // before the ping, and they were dropped; h9: a ping alone left the newest value of a burst
    // over the command rate waiting for the pacer, and `close` dropped it).
    let flushed = client
        .flush()
        .await
        .context("waiting for the datagrams to go out");
    ended?;
    flushed?;
    if sent > 1 {
        eprintln!(
            "quiver: sent {sent} messages to {room} unacknowledged, as datagrams where they fit"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines as `lines()` split them (`\n`, `\r\n`, a last line without one), each checked,
    /// and nothing read after the first bad one (outside audit 122, F2, F3).
    #[tokio::test]
    async fn stdin_lines_end_at_the_first_bad_line() {
        let lines = |input: &'static [u8], limit| async move {
            stdin_lines(input, limit)
                .map(|l| l.map_err(|e| format!("{e:#}")))
                .collect::<Vec<_>>()
                .await
        };
        let ok = |s: &str| Ok(Bytes::from(s.to_owned()));
        assert_eq!(
            lines(b"a\r\n\nbc\nd", 5).await,
            [ok("a"), ok(""), ok("bc"), ok("d")]
        );
        assert_eq!(lines(b"12345\r\n", 5).await, [ok("12345")]);
        let got = lines(b"good1\ngood2\n\xff\nafter3\nafter4\n", 100).await;
        assert_eq!(got.len(), 3, "{got:?}");
        assert!(
            got[2].as_ref().unwrap_err().contains("line 3: not UTF-8"),
            "{got:?}"
        );
        let got = lines(b"ok\n123456\nafter\n", 5).await;
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(
            got[1].as_ref().unwrap_err().contains("line 2: longer"),
            "{got:?}"
        );
    }

    #[test]
    fn a_rate_gives_a_pause_a_timer_can_keep_or_is_refused() {
        // Within a nanosecond: 1/rate is not exact in binary.
        let about = |rate: f64, nanos: u128| {
            let pause = pause_for(rate).unwrap().as_nanos();
            assert!(pause.abs_diff(nanos) <= 1, "{rate}: {pause} ns");
        };
        about(20.0, 50_000_000);
        about(MAX_RATE, 1_000);
        about(MIN_RATE, 100_000_000_000_000);
        for rate in [
            0.0,
            -1.0,
            1e-20,
            1e10,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
        ] {
            let refused = pause_for(rate).unwrap_err().to_string();
            assert!(refused.starts_with("--rate"), "{rate}: {refused}");
        }
    }
}
