//! `quiver-order-backend`: see the library's documentation (`src/lib.rs`).

use std::time::Duration;

use clap::Parser;

#[derive(Parser)]
#[command(about = "Example Quiver backend: order.place calls and the order room's subscribe hook")]
struct Args {
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    nats: String,
    #[arg(long, default_value = "demo")]
    tenant: String,
    /// Quiver's HTTP address (for the publish API).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    api: String,
    /// A JWT that may publish `order.>` in the tenant (`quiver token --publish 'order.>'`).
    #[arg(long, env = "ORDER_BACKEND_TOKEN", hide_env_values = true)]
    token: String,
    /// Seconds between two status events.
    #[arg(long, default_value_t = 2)]
    step: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let backend = quiver_order_backend::start(quiver_order_backend::Settings {
        nats_url: args.nats,
        tenant: args.tenant,
        api_url: args.api,
        token: args.token,
        step: Duration::from_secs(args.step),
    })
    .await?;
    tracing::info!("serving order.place and the order room's subscribe hook");
    tokio::select! {
        _ = backend.wait() => anyhow::bail!("NATS subscriptions ended"),
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}
