//! QUIC stateless resets (RFC 9000 §10.3) that work across restarts and between instances.
//!
//! quinn's defaults draw the reset key and the connection-ID key at random for each process: a
//! packet of a connection the process does not hold (the instance was restarted, or a load
//! balancer sent the packet to another instance) fails the connection-ID check and is dropped
//! in silence, so the client waits out its idle timeout (30 s and more) before it reconnects
//! (outside audit). Both keys are derived here from the TLS private key instead: an instance
//! restarted with the same key file, or any instance serving the same certificate, recognises
//! the connection IDs it issued and answers a stranger's packet with a reset the client
//! accepts, and the client reconnects at once.
//!
//! Derived, not the key itself: SHA-256 over a label and the key's DER, a one-way step, so a
//! reset token says nothing about the TLS key. Instances with different certificates do not
//! reset each other's connections (their clients fall back to the idle timeout).

use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use wtransport::quinn::EndpointConfig;

/// Resets sent at most one per this interval per endpoint (quinn's default is 20 ms: 50 a
/// second, so a restarted instance would take minutes to tell thousands of clients). A reset
/// is smaller than the packet that caused it, so it amplifies nothing; this bounds the work.
const MIN_RESET_INTERVAL: Duration = Duration::from_millis(1);

fn derive(label: &[u8], private_key_der: &[u8]) -> [u8; 32] {
    let mut hash = Sha256::new();
    hash.update(b"quiver QUIC ");
    hash.update(label);
    hash.update([0]);
    hash.update(private_key_der);
    hash.finalize().into()
}

/// Gives the endpoint reset and connection-ID keys derived from the TLS private key.
pub fn apply(endpoint: &mut EndpointConfig, private_key_der: &[u8]) {
    let reset = derive(b"stateless reset key", private_key_der);
    endpoint.reset_key(Arc::new(ring::hmac::Key::new(
        ring::hmac::HMAC_SHA256,
        &reset,
    )));
    let cid = derive(b"connection id key", private_key_der);
    let mut cid_key = [0u8; 8];
    cid_key.copy_from_slice(&cid[..8]);
    let cid_key = u64::from_le_bytes(cid_key);
    endpoint.cid_generator(move || {
        Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
    });
    endpoint.min_reset_interval(MIN_RESET_INTERVAL);
}

#[cfg(test)]
mod tests {
    use super::derive;

    #[test]
    fn keys_follow_the_tls_key_and_differ_by_purpose() {
        let a = derive(b"stateless reset key", b"key one");
        assert_eq!(a, derive(b"stateless reset key", b"key one"));
        assert_ne!(a, derive(b"stateless reset key", b"key two"));
        assert_ne!(a, derive(b"connection id key", b"key one"));
    }
}
