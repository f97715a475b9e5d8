//! A subscription's delivery path, from the hub to its client. The writer task that owns the
//! subscription's stream is in `writer.rs`; the stream lent to the hub while that writer is
//! idle, so that the fan-out writes a publication straight into it, in `direct.rs`; the
//! writer's batches, stream writes and stall deadline in `write.rs`.

mod direct;
mod write;
mod writer;

pub use direct::{Direct, Offered};
// What `Direct::reclaim` returns: named outside only by the hub's tests.
#[cfg(test)]
pub use direct::Target;
pub use writer::{Ended, HubEnd, Sink, Writer};
