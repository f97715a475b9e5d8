//! `quiver sub`: print what is published in rooms, one line per message.

use crate::terminal::{json_safe, safe, safe_bytes};
use std::collections::HashMap;
use tokio::io::AsyncWriteExt;

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use futures::StreamExt;
use quiver_client::{Client, ConnectionState, ErrorCode, Position, Recovery, SubEvent};

use crate::conn::{fixed_token_expired, fixed_token_expired_error, ConnArgs};

#[derive(Args)]
pub struct SubArgs {
    #[command(flatten)]
    conn: ConnArgs,
    /// How each message is printed: `text` is the payload (prefixed with the room and a tab
    /// when several rooms are subscribed), escaped on a terminal and in a pipe alike: its
    /// control characters (`\n`, `\t`, `\u{1b}`, also C1, DEL and bidirectional overrides)
    /// escaped, a backslash as `\\` and bytes that are not UTF-8 as `\xNN`, so each message is
    /// one line, none reaches the terminal as a control, and the line reads back as the
    /// payload; `json` is one object per line with room, position (epoch and offset as
    /// strings) and the exact payload (UTF-8 as `payload`, else `payload_base64`), those
    /// characters written as `\uXXXX` escapes, which every JSON parser reads back exactly.
    /// Once subscribed, Ctrl-C or SIGTERM ends `sub` with status 0, as does its reader going
    /// away (`| head`); before (while connecting), the signal's default ends it (130, 143).
    #[arg(long, default_value = "text")]
    format: Format,
    /// Rooms to subscribe to.
    #[arg(required = true)]
    rooms: Vec<String>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Text,
    Json,
}

/// How long `sub` waits before subscribing again to a room it fell behind in.
const SLOW_CONSUMER_PAUSE: std::time::Duration = std::time::Duration::from_secs(1);

const NOT_RECOVERED: &str = "resubscribed without recovery (the room keeps no history): \
                             messages published meanwhile are lost";

pub async fn sub(args: SubArgs) -> Result<()> {
    let client = args.conn.connect().await?;
    if let Some(transport) = client.transport() {
        // stdout carries only messages; this is for the person watching.
        eprintln!("quiver: connected over {transport}");
    }
    let mut subs = Vec::new();
    for room in &args.rooms {
        let sub = client
            .subscribe(room)
            .await
            .with_context(|| format!("subscribe {room}"))?;
        let room = room.clone();
        subs.push(sub.map(move |event| (room.clone(), event)).boxed());
    }
    // Scripts (and tests) wait for this line before publishing.
    eprintln!("quiver: subscribed to {}", args.rooms.join(", "));
    let several = args.rooms.len() > 1;
    let mut events = futures::stream::select_all(subs);
    // The last position printed per history room: where a room ended as `slow_consumer`
    // resumes.
    let mut last: HashMap<String, Position> = HashMap::new();
    let mut state = client.state();
    // Only changes from now on are news; "reconnected" only after a loss was reported.
    state.borrow_and_update();
    let mut lost = false;
    // Tokio's stdout: a write blocked on a pipe nobody reads can be given up for a signal.
    let mut stdout = tokio::io::stdout();
    // Installed once: made anew on every pass, a signal that came while `sub` was writing,
    // pausing or resubscribing went to no listener and was lost, and `sub` went on (outside
    // audit 122, F1).
    let mut signals = crate::cli::Signals::install();
    let result = loop {
        let (room, event) = tokio::select! {
            _ = signals.next() => break Ok(()),
            changed = state.changed() => {
                if changed.is_ok() {
                    let now = state.borrow_and_update().clone();
                    // A given token that expired stays expired: the client's reconnects would
                    // be refused for ever (outside audit 26: `sub` retried until killed).
                    if fixed_token_expired(&now, args.conn.token_is_fixed()) {
                        break Err(fixed_token_expired_error());
                    }
                    report_state(&now, &client, &mut lost);
                }
                continue;
            }
            event = events.next() => match event {
                Some(event) => event,
                None => break Ok(()),
            },
        };
        match event {
            SubEvent::Publication {
                room,
                position,
                payload,
            } => {
                if let Some(position) = position {
                    last.insert(room.clone(), position);
                }
                // Text mode escapes the payload's control characters (and bytes that are not
                // UTF-8) always, not only on a terminal: the line is what a pipe reads too, and
                // a payload's newline would start a line of another room there.
                let mut line = match args.format {
                    Format::Text if several => {
                        [room.as_bytes(), b"\t", safe_bytes(&payload).as_bytes()].concat()
                    }
                    Format::Text => safe_bytes(&payload).as_bytes().to_vec(),
                    Format::Json => json_line(&room, position, &payload).into_bytes(),
                };
                line.push(b'\n');
                // One line per publication, flushed, so pipes see it at once. A reader that
                // went away (`sub ROOM | head -1`) ends `sub` quietly, as it ends any tool
                // (outside audit 122, F4: "Broken pipe" and status 1).
                let written = tokio::select! {
                    _ = signals.next() => break Ok(()),
                    written = async {
                        stdout.write_all(&line).await?;
                        stdout.flush().await
                    } => written,
                };
                match written {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => break Ok(()),
                    Err(e) => break Err(anyhow::Error::from(e).context("writing to stdout")),
                }
            }
            SubEvent::Resubscribed { recovery } => {
                let how = match recovery {
                    Recovery::Recovered { replayed } => {
                        format!("recovered, {replayed} missed message(s) replayed")
                    }
                    Recovery::Failed => {
                        "recovery FAILED: messages published meanwhile are lost".into()
                    }
                    Recovery::NotRequested => NOT_RECOVERED.into(),
                };
                eprintln!("quiver: {room}: {how}");
            }
            SubEvent::Joined { member } => {
                eprintln!("quiver: {room}: {} joined", safe(&member.user))
            }
            SubEvent::Left { member } => eprintln!("quiver: {room}: {} left", safe(&member.user)),
            SubEvent::Ended { code, reason } if code == ErrorCode::SlowConsumer as u16 => {
                // The output could not keep up (PROTOCOL.md §5: "the client may subscribe
                // again"); a tail goes on, resuming where it stopped, and says what was lost
                // (outside audit 26: `sub` exited).
                eprintln!(
                    "quiver: {room}: fell behind ({}); subscribing again",
                    safe(&reason)
                );
                let again = tokio::select! {
                    _ = signals.next() => break Ok(()),
                    again = async {
                        tokio::time::sleep(SLOW_CONSUMER_PAUSE).await;
                        match last.get(&room) {
                            Some(position) => client.subscribe_from(&room, *position).await,
                            None => client.subscribe(&room).await,
                        }
                    } => again,
                };
                let again = match again {
                    Ok(again) => again,
                    Err(e) => break Err(e).with_context(|| format!("subscribe {room} again")),
                };
                if !last.contains_key(&room) {
                    eprintln!("quiver: {room}: {NOT_RECOVERED}");
                }
                events.push(again.map(move |event| (room.clone(), event)).boxed());
            }
            SubEvent::Ended { code, reason } => {
                break Err(anyhow::anyhow!(
                    "{room}: subscription ended: {} ({code})",
                    safe(&reason)
                ));
            }
        }
    };
    client.close().await;
    result
}

fn report_state(state: &ConnectionState, client: &Client, lost: &mut bool) {
    match state {
        ConnectionState::Disconnected { code, reason } => {
            *lost = true;
            eprintln!(
                "quiver: connection lost ({}, code {code}); reconnecting",
                safe(reason)
            )
        }
        ConnectionState::Connected { .. } if *lost => {
            *lost = false;
            let over = client.transport().map(|t| t.as_str()).unwrap_or("?");
            eprintln!("quiver: reconnected over {over}");
        }
        _ => {}
    }
}

fn json_line(room: &str, position: Option<quiver_client::Position>, payload: &[u8]) -> String {
    use base64::Engine;
    let mut object = serde_json::json!({
        "room": room,
        // Strings: epochs and offsets are u64, beyond what JSON numbers hold exactly in JS.
        "position": position.map(|p| serde_json::json!({
            "epoch": p.epoch.to_string(),
            "offset": p.offset.to_string(),
        })),
    });
    match std::str::from_utf8(payload) {
        Ok(text) => object["payload"] = text.into(),
        Err(_) => {
            object["payload_base64"] = base64::engine::general_purpose::STANDARD
                .encode(payload)
                .into()
        }
    }
    // serde_json leaves C1 controls, DEL and bidirectional overrides raw (outside audit 122,
    // F5): escaped, the line is the same JSON for a parser and harmless on a terminal.
    json_safe(object.to_string())
}
