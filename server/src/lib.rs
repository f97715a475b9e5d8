//! The Quiver server library. The `quiver` binary (crate `cli/`) is a thin CLI over it; tests start
//! servers in-process through [`Server::start`].
//!
//! Layers, outermost first: [`transport`] (WebTransport, WebSocket and SSE adapters: request
//! checks, bytes in and out) → [`session`] (the one session core: commands, limits, expiry) →
//! [`hub`] (rooms and fan-out) ← [`broker`] (between instances), with [`subscription`] writing
//! each room's frames. See ARCHITECTURE.md.

pub mod api;
pub mod auth;
pub mod broker;
pub mod config;
pub mod control;
mod cork;
pub mod delivery_queue;
mod demo;
#[doc(hidden)]
pub mod fuzzing;
pub mod history;
mod http;
pub mod http_client;
pub mod https;
pub mod hub;
pub mod idempotency;
pub mod jwks;
pub mod latest;
mod listeners;
mod log_budget;
pub mod metrics;
pub mod presence;
pub mod quota;
pub mod read_budget;
pub mod registry;
mod replay;
pub mod revocation;
pub mod rpc;
mod server;
mod session;
mod stateless_reset;
mod subscription;
pub mod tcp;
pub mod text;
pub mod tls;
pub mod tls_resumption;
pub mod token_cache;
pub mod transport;
pub mod udp_socket;
mod write_stall;

pub use config::Config;
pub use server::{dev_secret, Server, StartError, DEV_SECRET_FILE};
