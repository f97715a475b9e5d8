//! The session's opening: the client's `Hello`, awaited within `timeouts.hello`, checked
//! (the first frame, the protocol version, the token still valid) and answered `Welcome`.

use quiver_proto::{ClientFrame, CloseCode, Command, Event, Limits, PROTOCOL_VERSION};
use tokio_util::sync::CancellationToken;

use super::{Exit, Session};
use crate::auth::unix_now;
use crate::metrics as m;
use crate::transport::{queue, Inbound};

impl Session {
    /// Waits for the client's `Hello` (within `timeouts.hello`, before the token expires)
    /// and answers `Welcome`, or says why the session ends.
    pub(super) async fn hello(
        &mut self,
        inbound: &mut queue::Receiver<Inbound>,
        shutdown: &CancellationToken,
    ) -> Result<(), Exit> {
        let deadline = tokio::time::Instant::now() + self.shared.config.timeouts.hello;
        // The token's expiry holds before the Hello too (PROTOCOL.md §6).
        let expiry = self.expiry();
        let first = loop {
            // Biased, the queue before the peer's leaving: a client that writes its `Hello`
            // and commands and leaves right behind them has them carried out (PROTOCOL §3);
            // unbiased, the session often saw the close first and dropped them all (outside
            // regression audit 9, R3).
            let first = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Err(Exit::Close(CloseCode::Shutdown, "server shutting down".into())),
                _ = tokio::time::sleep_until(expiry) => return Err(Exit::Close(CloseCode::TokenExpired, "token expired before Hello".into())),
                first = tokio::time::timeout_at(deadline, inbound.recv()) => first,
                reason = self.link.peer.closed() => return Err(Exit::Gone(reason)),
            };
            // A datagram may overtake the Hello on the network: dropped, not a protocol error.
            if let Ok(Some(Inbound::Datagram(..))) = first {
                m::datagram_dropped("before_hello");
                continue;
            }
            if let Ok(Some(Inbound::Control(arrived))) = first {
                match self.control_frame(arrived) {
                    Some(exit) => return Err(exit),
                    None => continue,
                }
            }
            break first;
        };
        if matches!(
            first,
            Ok(Some(Inbound::Frame(..) | Inbound::Unknown { .. }))
        ) {
            self.tally.received();
        }
        let hello = match first {
            Err(_) => return Err(Exit::Close(CloseCode::HelloTimeout, "no Hello".into())),
            Ok(None) => return Err(Exit::Gone("client_closed")),
            Ok(Some(Inbound::Ended(reason))) => return Err(Exit::Gone(reason)),
            Ok(Some(Inbound::Malformed(reason))) => {
                return Err(Exit::Close(CloseCode::ProtocolError, reason))
            }
            Ok(Some(Inbound::Frame(frame, _))) => match *frame {
                ClientFrame {
                    id,
                    command: Command::Hello { version, .. },
                } => Some((id, version)),
                _ => None,
            },
            Ok(Some(Inbound::Unknown { .. } | Inbound::Datagram(..) | Inbound::Control(_))) => None,
        };
        let Some((id, version)) = hello else {
            return Err(Exit::Close(
                CloseCode::ProtocolError,
                "the first frame must be Hello".into(),
            ));
        };
        if version != PROTOCOL_VERSION {
            return Err(Exit::Close(
                CloseCode::UnsupportedVersion,
                format!("protocol version {version} not supported; this server speaks {PROTOCOL_VERSION}"),
            ));
        }
        // A token that expired between the upgrade (or CONNECT) and the Hello opens no session:
        // a `Welcome` followed at once by `token_expired` would read as "connected" first.
        let leeway = self.shared.config.auth.leeway.as_secs();
        if unix_now() >= self.grant.expires_at.saturating_add(leeway) {
            return Err(Exit::Close(
                CloseCode::TokenExpired,
                "token expired before Hello".into(),
            ));
        }
        let limits = &self.shared.config.limits;
        self.reply(
            id,
            Event::Welcome {
                version: PROTOCOL_VERSION,
                session: self.id.clone(),
                user: self.grant.user.clone(),
                tenant: self.grant.tenant.to_string(),
                expires_at: Some(self.grant.expires_at),
                limits: Limits {
                    max_frame: limits.max_frame,
                    max_payload: limits.max_payload,
                    max_subscriptions: limits.max_subscriptions,
                    commands_per_second: limits.commands_per_second,
                },
            },
        )
        .await;
        Ok(())
    }
}
