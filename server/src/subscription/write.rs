//! A writer's stream writes: the frames gathered for one write ([`Batch`]), that write under
//! the room's stall deadline ([`Stall`]), and opening the stream. They serve the writer's loop
//! (`writer.rs`).

use bytes::Bytes;
use wtransport::Connection;

/// Frames waiting for one stream write.
#[derive(Default)]
pub(super) struct Batch {
    pub(super) chunks: Vec<Bytes>,
    pub(super) bytes: usize,
    /// Live publications among them (for the session's tally).
    pub(super) live: u64,
    /// Bytes of them taken off the queue: still counted against the session's budget, given
    /// back once written (outside audit 120, F1).
    pub(super) queued: usize,
}

impl Batch {
    /// A frame of the replay's or a `latest` value: not the queue's.
    pub(super) fn push(&mut self, frame: Bytes, live: bool) {
        if frame.is_empty() {
            return;
        }
        self.bytes += frame.len();
        self.live += u64::from(live);
        self.chunks.push(frame);
    }

    /// A live delivery taken off the queue.
    pub(super) fn push_queued(&mut self, frame: Bytes) {
        self.queued += frame.len();
        self.push(frame, true);
    }

    pub(super) fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    pub(super) fn clear(&mut self) {
        self.chunks.clear();
        self.bytes = 0;
        self.live = 0;
        self.queued = 0;
    }
}

/// Why [`Stall::write`] gave up.
pub(super) enum NotWritten {
    /// The stream took no byte for the deadline.
    Stalled,
    Failed(wtransport::quinn::WriteError),
}

/// A writer's stall deadline: its writes give up once the stream has taken no byte for a whole
/// deadline (so a stall is noticed between one and two deadlines after it began). One timer
/// per writer, made at its first write that has to wait and reset at most once per deadline,
/// not once per write: a fan-out's writers wait on flow control all the time.
pub(super) struct Stall {
    deadline: std::time::Duration,
    timer: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    /// Bytes written so far, and when the timer was last armed.
    written: u64,
    armed_at: u64,
}

impl Stall {
    pub(super) fn new(deadline: std::time::Duration) -> Self {
        Self {
            deadline,
            timer: None,
            written: 0,
            armed_at: 0,
        }
    }

    /// Writes every chunk, as quinn's `write_all_chunks` does, unless the stream stalls. A
    /// write that goes through at once costs what it did without the deadline: the timer is
    /// polled only once a write has to wait.
    async fn write(
        &mut self,
        stream: &mut wtransport::quinn::SendStream,
        mut chunks: &mut [Bytes],
    ) -> Result<(), NotWritten> {
        while !chunks.is_empty() {
            let written = tokio::select! {
                biased;
                written = stream.write_chunks(chunks) => written.map_err(NotWritten::Failed)?,
                stalled = self.tick() => {
                    if stalled {
                        return Err(NotWritten::Stalled);
                    }
                    continue;
                }
            };
            self.written += written.bytes as u64;
            chunks = &mut chunks[written.chunks..];
        }
        Ok(())
    }

    /// Resolves when the timer fires: `true` if nothing was written during a whole deadline,
    /// else the timer is armed again.
    async fn tick(&mut self) -> bool {
        let deadline = self.deadline;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(deadline)));
        // Elapsed while nothing waited (the writer was idle, or writes went through at once):
        // the stall, if any, starts now.
        if timer.is_elapsed() {
            timer.as_mut().reset(tokio::time::Instant::now() + deadline);
            self.armed_at = self.written;
        }
        timer.as_mut().await;
        if self.written == self.armed_at {
            return true;
        }
        timer.as_mut().reset(tokio::time::Instant::now() + deadline);
        self.armed_at = self.written;
        false
    }
}

/// One batch's write: under the stall deadline, if the room has one.
pub(super) async fn write(
    stream: &mut wtransport::quinn::SendStream,
    chunks: &mut [Bytes],
    stall: Option<&mut Stall>,
) -> Result<(), NotWritten> {
    match stall {
        Some(stall) => stall.write(stream, chunks).await,
        None => stream
            .write_all_chunks(chunks)
            .await
            .map_err(NotWritten::Failed),
    }
}

pub(super) async fn open(conn: &Connection) -> Option<wtransport::SendStream> {
    conn.open_uni().await.ok()?.await.ok()
}
