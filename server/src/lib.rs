//! The Quiver server library. The `quiver` binary (`main.rs`) is a thin CLI over it; tests start
//! servers in-process through [`Server::start`].
//!
//! Layers, outermost first: [`endpoint`] (CONNECT checks) → [`session`] (one session's control
//! stream and commands) → [`hub`] (rooms and fan-out) ← [`broker`] (between instances), with
//! [`subscription`] writing each room's stream. See ARCHITECTURE.md.

mod api;
pub mod auth;
pub mod broker;
pub mod config;
mod demo;
mod endpoint;
mod http;
pub mod hub;
pub mod metrics;
pub mod presence;
mod server;
mod session;
mod subscription;
pub mod tls;

pub use config::Config;
pub use server::{dev_secret, Server, StartError, DEV_SECRET_FILE};
