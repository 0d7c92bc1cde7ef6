//! `spread`: the command line client.

fn main() -> std::process::ExitCode {
    spread_cli::run()
}
