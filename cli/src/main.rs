//! `quiver`: the server, plus the small tools around it (configuration check, certificates,
//! tokens, a terminal subscriber and publisher).

mod call;
mod cli;
mod config_cmd;
mod conn;
mod keys;
mod logging;
mod publish;
mod serve;
mod sub;
mod terminal;
mod token;

/// See the `jemalloc` feature in Cargo.toml for why.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    cli::main()
}
