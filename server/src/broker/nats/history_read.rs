//! Reading a history room back from JetStream: a resume's replay and `History` pages.
//!
//! Why a replay is complete, or answered `Failed`, is in [`super::history`]'s documentation.
//!
//! **Replays are read a page at a time.** A JetStream message's payload is this process's own
//! copy, so a replay read whole at `Subscribe` made every slow reader of a long history hold all
//! of it (up to `limits.history_tenant_max_bytes`, 64 MiB by default, per resume). A resume
//! lists its sequences at `Subscribe` (a headers-only read: 8 bytes a publication, at most
//! `history_size`), so `Recovered { replayed }` is exact, and [`Pages`] reads their payloads a
//! page ([`REPLAY_PAGE`]) at a time as the subscription's stream takes them, once the session
//! gives the replay its turn (`crate::replay::AT_ONCE`), so a session holds a few pages however
//! many rooms it resumes. A page must bring exactly the listed sequences: one missing was cut
//! from history meanwhile (the subscriber read slower than the room's limits keep), and the
//! replay ends there with [`ReplayError::Cut`] rather than go on with a gap.
//!
//! **Too large to send.** A history stream takes messages a little over `max_payload` (room
//! for Quiver's headers), so a tenant's backend publishing into a room's subject itself can
//! store a payload no subscriber may get (one over `max_frame`, even). Live, such a message is
//! dropped (`super::fits`); read back it is passed over too: a replay's listing leaves it out
//! (its `Nats-Msg-Size`), so `replayed` counts what is sent, and pages skip it (outside audit
//! 36, N2: replayed past `max_frame`, and a `History` page stuck empty and `truncated`).
//!
//! **The seam.** The completeness check (in [`super::history`]'s documentation) and the read
//! are separate JetStream requests: a room cut from the front between them would be read from
//! its next kept publication, after a gap. So after the listing (or a page's read) the room's
//! first kept publication is read again ([`seam_intact`]).

use std::collections::VecDeque;
use std::sync::Arc;

use async_nats::jetstream::{consumer, stream};
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::StreamExt;
use quiver_proto::{Position, TenantId};

use super::history::{epoch_of, pull, TenantStream, READ_BATCH};
use super::{bounded, subject, unavailable, Inner, JS_TIMEOUT};
use crate::broker::{BrokerError, Recovered, ReplayError, ReplayPages};
use crate::config::NamespaceConfig;
use crate::hub::RoomKey;
use crate::replay::REPLAY_PAGE;

/// How far a read goes.
#[derive(Clone, Copy)]
pub(super) enum Reach {
    /// A resume: everything after the position, listed now and read as the stream takes it.
    Replay,
    /// A `History` page, all now: at most `max` publications, and none more once their
    /// payloads are past `max_bytes` (the page's frame could not hold them); `from_oldest`:
    /// it may start wherever the room's kept publications start (`Broker::recover_some`).
    Page {
        max: usize,
        max_bytes: usize,
        from_oldest: bool,
    },
}

/// Publications one pull asks for: enough for about a page of the largest payloads, so a pull
/// never brings many pages' worth at once.
fn pull_size(max_payload: usize) -> usize {
    (REPLAY_PAGE / max_payload.max(1)).clamp(1, READ_BATCH)
}

/// One message of a read consumer, checked to have arrived in order, with its stream sequence
/// and how many are pending after it: a read consumer does not recover from a lost message as
/// an ordered one would, so its sequence must count up by one, or the read is refused rather
/// than given with a gap.
fn in_order(
    item: Result<async_nats::jetstream::Message, async_nats::Error>,
    expected: &mut u64,
) -> Result<(async_nats::jetstream::Message, u64, u64), BrokerError> {
    let msg = item.map_err(unavailable)?;
    let info = msg.info().map_err(unavailable)?;
    if info.consumer_sequence != *expected {
        return Err(BrokerError::Unavailable(
            "history read lost a message in transit; retry".into(),
        ));
    }
    *expected += 1;
    let (sequence, pending) = (info.stream_sequence, info.pending);
    Ok((msg, sequence, pending))
}

impl Inner {
    pub(super) async fn recover_history(
        self: &Arc<Self>,
        key: &RoomKey,
        ns: &NamespaceConfig,
        since: Option<Position>,
        reach: Reach,
    ) -> Result<Recovered, BrokerError> {
        self.reachable()?;
        let TenantStream { stream, epoch } = self.tenant_stream(&key.tenant, ns).await?;
        bounded(
            "history read",
            self.read_history(key, stream, epoch, ns.history_size, since, reach),
        )
        .await
    }

    async fn read_history(
        self: &Arc<Self>,
        key: &RoomKey,
        stream: stream::Stream,
        epoch: u64,
        history_size: usize,
        since: Option<Position>,
        reach: Reach,
    ) -> Result<Recovered, BrokerError> {
        let (tenant, subject) = (key.tenant.clone(), subject(key));
        let info = stream.get_info().await.map_err(unavailable)?;
        // The count limit that can have cut the room: the stream's lowest ever, when it is
        // below this configuration's (another instance, configured otherwise, set it last;
        // see the module documentation of `history.rs`).
        let per_room = super::history::room_limit_floor(&info.config).min(history_size as u64);
        let state = info.state;
        let last_kept = match stream.get_last_raw_message_by_subject(&subject).await {
            Ok(msg) => Some(msg.sequence),
            Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => None,
            Err(e) => return Err(unavailable(e)),
        };
        // A room with nothing kept is at the stream's position: whatever the room gets next
        // comes after it. (The stream info was read first, so nothing of the room slips
        // between.)
        let current = Position {
            epoch,
            offset: last_kept.unwrap_or(state.last_sequence),
        };
        let answer = |replay, rest| {
            Ok(Recovered {
                current: Some(current),
                replay,
                rest,
            })
        };
        let Some(since) = since else {
            return answer(None, None);
        };
        // Another epoch, or a position this stream never reached.
        if since.epoch != epoch || since.offset > state.last_sequence {
            return answer(None, None);
        }
        let front_intact = state.first_sequence <= since.offset.saturating_add(1);
        let Some(last) = last_kept else {
            // The room keeps nothing: nothing after P was removed as long as the stream's front
            // is intact. (P cannot be told from another room's position here: see the module
            // documentation.)
            return answer(front_intact.then(Vec::new), None);
        };
        // Past the room's last publication: never a position of this room (its later
        // publications all have higher sequences), as the embedded broker answers it.
        if since.offset > last {
            return answer(None, None);
        }
        let first_kept = match stream.direct_get_first_for_subject(subject.clone()).await {
            Ok(msg) => msg.sequence,
            Err(e) if e.kind() == stream::DirectGetErrorKind::NotFound => {
                return answer(None, None)
            }
            Err(e) => return Err(unavailable(e)),
        };
        if last == since.offset {
            return answer(Some(Vec::new()), None);
        }
        // A replay lists its sequences here (without payloads) and reads them as the stream
        // takes them; a page reads its publications now.
        let listing = matches!(reach, Reach::Replay);
        let (consumer, _guard) = self
            .read_consumer(
                &tenant,
                &stream,
                read_from(&subject, since.offset + 1, listing),
            )
            .await?;
        let after = consumer.cached_info().num_pending;
        // See the module documentation: the room's first kept message at or before P + 1, or
        // (everything kept is after P, so `after` is all it keeps) under the count limit with
        // the stream's front intact.
        // A page of the oldest needs no check: wherever the room's kept publications start
        // now is where it starts.
        let from_oldest = matches!(
            reach,
            Reach::Page {
                from_oldest: true,
                ..
            }
        );
        let complete =
            from_oldest || first_kept <= since.offset + 1 || (after < per_room && front_intact);
        if !complete {
            return answer(None, None);
        }
        if after == 0 {
            // Cut between our reads: nothing left to replay, and it was not ours to keep.
            return answer(None, None);
        }
        let max_payload = self.config.limits.max_payload as usize;
        let per_pull = pull_size(max_payload);
        let (max, max_bytes) = match reach {
            Reach::Page { max, max_bytes, .. } => (max, max_bytes),
            Reach::Replay => {
                let Some((first, rest)) = list(&consumer, last, max_payload).await? else {
                    return answer(None, None);
                };
                let Some(now) = first_kept_now(&stream, &subject).await? else {
                    return answer(None, None);
                };
                if !seam_intact(since.offset, first_kept, first, now) {
                    return answer(None, None);
                }
                let pages = Pages {
                    inner: self.clone(),
                    tenant,
                    stream,
                    epoch,
                    subject,
                    per_pull,
                    max_payload,
                    last: Position {
                        epoch,
                        offset: last,
                    },
                    rest,
                };
                return answer(Some(Vec::new()), Some(Box::new(pages)));
            }
        };
        let mut replay = Vec::new();
        let mut bytes = 0;
        let mut expected = 1;
        // The first sequence read, sent or passed over (the seam is checked from it).
        let mut first_read = None;
        // Whether the read reached the room's end (not a bound of the page).
        let mut at_end = false;
        'read: while replay.len() < max {
            let mut messages = pull(&consumer, (max - replay.len()).min(per_pull)).await?;
            let mut read = 0;
            while let Some(item) = messages.next().await {
                let (msg, seq, pending) = in_order(item, &mut expected)?;
                read += 1;
                first_read.get_or_insert(seq);
                // Too large for any subscriber (module documentation): passed over.
                if msg.payload.len() <= max_payload {
                    bytes += msg.payload.len();
                    replay.push((Position { epoch, offset: seq }, msg.payload.clone()));
                }
                if seq >= last || pending == 0 {
                    at_end = true;
                    break 'read;
                }
                if replay.len() >= max || bytes > max_bytes {
                    break 'read;
                }
            }
            if read == 0 {
                // What was pending is gone (cut from the front meanwhile): the page would
                // have a gap.
                return answer(None, None);
            }
        }
        let Some(first) = first_read else {
            return answer(None, None);
        };
        let Some(now) = first_kept_now(&stream, &subject).await? else {
            return answer(None, None);
        };
        if from_oldest {
            // Cut meanwhile: from the room's oldest now on nothing was ever cut, so the read
            // took all of it and what is left starts there without a gap. Unless the page
            // stopped at its bounds: then it could hold more than is left, and is read again.
            let cut = replay.iter().take_while(|(p, _)| p.offset < now).count();
            if cut > 0 && !at_end {
                return answer(None, None);
            }
            replay.drain(..cut);
            if replay.is_empty() {
                // Read again when all it held was cut; when it held nothing sendable (every
                // kept publication too large: passed over), that is the page (outside audit
                // 37, F-A: answered as a position that cannot be paged from).
                return answer((cut == 0).then(Vec::new), None);
            }
        } else if !seam_intact(since.offset, first_kept, first, now) {
            return answer(None, None);
        }
        answer(Some(replay), None)
    }
}

/// The room's first kept publication now, `None` when it keeps none.
pub(super) async fn first_kept_now(
    stream: &stream::Stream,
    subject: &str,
) -> Result<Option<u64>, BrokerError> {
    match stream
        .direct_get_first_for_subject(subject.to_owned())
        .await
    {
        Ok(msg) => Ok(Some(msg.sequence)),
        Err(e) if e.kind() == stream::DirectGetErrorKind::NotFound => Ok(None),
        Err(e) => Err(unavailable(e)),
    }
}

/// Whether a read from `since + 1` that began at `first` lost nothing after `since` on its
/// way, `now` being the room's first kept publication read after it. Cuts only ever take a
/// room's oldest publications, so between the completeness check (which saw the room's first
/// kept publication at `first_kept`) and the read, the room's first publications after `since`
/// may have been cut while the read's consumer still started at `since + 1`, and the read
/// would begin after a gap (outside audit: 1-2 resumes in 40 under three publishers). If the
/// room still keeps something at or before `since`, nothing after it was ever cut; otherwise
/// the read must begin at the publication the check saw first after `since` (`first_kept`,
/// when that was after `since`), and nothing from there on may have gone while it was read.
fn seam_intact(since: u64, first_kept: u64, first: u64, now: u64) -> bool {
    if first == since + 1 {
        // Nothing could lie between: the stream's next sequence is the read's first.
        now <= first
    } else if first_kept > since {
        first == first_kept && now <= first
    } else {
        now <= since
    }
}

/// A headers-only read consumer's sequences through `last`, oldest first (8 bytes each, at
/// most `history_size`), leaving out those whose payload (`Nats-Msg-Size`) is over
/// `max_payload`, with the first sequence read (listed or not: the seam is checked from it);
/// `None` when none is left (cut from the front meanwhile).
async fn list(
    consumer: &consumer::PullConsumer,
    last: u64,
    max_payload: usize,
) -> Result<Option<(u64, VecDeque<u64>)>, BrokerError> {
    let mut sequences = VecDeque::new();
    let mut first = None;
    let mut expected = 1;
    loop {
        let mut messages = pull(consumer, READ_BATCH).await?;
        let mut read = 0;
        while let Some(item) = messages.next().await {
            let (msg, seq, pending) = in_order(item, &mut expected)?;
            read += 1;
            first.get_or_insert(seq);
            if payload_size(&msg).is_none_or(|size| size <= max_payload) {
                sequences.push_back(seq);
            }
            if seq >= last || pending == 0 {
                return Ok(first.map(|first| (first, sequences)));
            }
        }
        if read == 0 {
            return Ok(first.map(|first| (first, sequences)));
        }
    }
}

/// The payload size a headers-only read gives in its `Nats-Msg-Size` header: the last one,
/// which JetStream appends after the message's own headers. A publisher may have written one
/// of its own, and the first was read: a small payload claiming to be large was left out of a
/// replay, a large one claiming to be small counted and never sent (outside audit 75, F1).
fn payload_size(msg: &async_nats::jetstream::Message) -> Option<usize> {
    msg.headers
        .as_ref()?
        .get_last("Nats-Msg-Size")?
        .as_str()
        .trim()
        .parse()
        .ok()
}

/// A read consumer's configuration: one room's messages from a sequence on.
fn read_from(subject: &str, start_sequence: u64, headers_only: bool) -> consumer::pull::Config {
    consumer::pull::Config {
        filter_subject: subject.to_owned(),
        deliver_policy: consumer::DeliverPolicy::ByStartSequence { start_sequence },
        headers_only,
        ..Default::default()
    }
}

/// The rest of a resume's replay, read a page at a time (module documentation).
struct Pages {
    inner: Arc<Inner>,
    tenant: TenantId,
    stream: stream::Stream,
    epoch: u64,
    subject: String,
    per_pull: usize,
    /// Payloads over it were left out of `rest` (module documentation).
    max_payload: usize,
    last: Position,
    /// The sequences still to read, oldest first.
    rest: VecDeque<u64>,
}

impl Pages {
    async fn read_page(&mut self) -> Result<Vec<(Position, Bytes)>, ReplayError> {
        let Some(&from) = self.rest.front() else {
            return Ok(Vec::new());
        };
        // A stream lost and made again restarts its sequences: ours would name others.
        let info = self.stream.get_info().await.map_err(unavailable)?;
        if epoch_of(&info) != self.epoch {
            return Err(ReplayError::Cut);
        }
        let (consumer, _guard) = self
            .inner
            .read_consumer(
                &self.tenant,
                &self.stream,
                read_from(&self.subject, from, false),
            )
            .await?;
        let mut page = Vec::new();
        let mut bytes = 0;
        let mut expected = 1;
        while bytes < REPLAY_PAGE && !self.rest.is_empty() {
            let mut messages = pull(&consumer, self.rest.len().min(self.per_pull)).await?;
            let mut read = 0;
            while let Some(item) = messages.next().await {
                let (msg, seq, _) = in_order(item, &mut expected)?;
                read += 1;
                // Left out of the listing: too large to send.
                if self.rest.front().is_some_and(|&next| seq < next) {
                    continue;
                }
                // In order, so the next message is the next listed one, or that one was cut.
                if self.rest.pop_front() != Some(seq) {
                    return Err(ReplayError::Cut);
                }
                // One listed without its size (a header block that could not be read) and
                // too large is still never sent.
                if msg.payload.len() <= self.max_payload {
                    bytes += msg.payload.len();
                    let position = Position {
                        epoch: self.epoch,
                        offset: seq,
                    };
                    page.push((position, msg.payload.clone()));
                }
                if self.rest.is_empty() {
                    break;
                }
            }
            if read == 0 {
                return Err(ReplayError::Cut);
            }
        }
        Ok(page)
    }
}

impl ReplayPages for Pages {
    fn remaining(&self) -> usize {
        self.rest.len()
    }

    fn last(&self) -> Position {
        self.last
    }

    fn next_page(&mut self) -> BoxFuture<'_, Result<Vec<(Position, Bytes)>, ReplayError>> {
        Box::pin(async move {
            tokio::time::timeout(JS_TIMEOUT, self.read_page())
                .await
                .map_err(|_| BrokerError::Unavailable("history replay page timed out".into()))?
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pull_asks_for_about_a_page_of_the_largest_payloads() {
        assert_eq!(pull_size(60 * 1024), 4);
        assert_eq!(pull_size(1 << 20), 1, "at least one");
        assert_eq!(pull_size(100), READ_BATCH, "at most a read batch");
    }

    #[test]
    fn a_read_is_whole_only_when_nothing_after_the_position_was_cut_before_it() {
        // The room kept 10 (the position itself) at the check and still keeps it.
        assert!(seam_intact(10, 8, 11, 8));
        // Kept 10 at the check, cut past it since: 11 may have gone before the read.
        assert!(!seam_intact(10, 8, 12, 12));
        assert!(
            seam_intact(10, 8, 11, 11),
            "the stream's next sequence: nothing between"
        );
        assert!(!seam_intact(10, 8, 11, 12), "cut past it while it was read");
        // Kept from 11 at the check: the read must begin there, and 11 still be kept.
        assert!(seam_intact(10, 11, 11, 11));
        assert!(!seam_intact(10, 11, 13, 13), "began after a gap");
        assert!(!seam_intact(10, 11, 11, 12), "cut while it was read");
    }
}
