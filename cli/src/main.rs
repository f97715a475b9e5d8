//! `quiver`: the server, plus the small tools around it (certificates, tokens, a terminal
//! subscriber and publisher).

mod cli;
mod logging;

/// See the `jemalloc` feature in Cargo.toml for why.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    cli::main()
}
