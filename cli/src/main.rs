//! `quiver`: the server, plus the small tools around it (certificates, tokens, a terminal
//! subscriber and publisher).

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
