//! The `confab` binary: parse the command line, load the configuration, set up logging, run the
//! command, and turn any error into one line on stderr and a non-zero exit code.

use std::process::ExitCode;

use clap::Parser as _;
use confab::{
    cli::{self, Cli, Command},
    config::Config,
    telemetry,
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(cli.config.as_deref()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("confab: {e}");
            return ExitCode::from(2);
        }
    };
    // Only the server logs by default; admin commands print their results instead.
    let level = if matches!(cli.command, Command::Serve { .. }) { config.log_level.as_str() } else { "warn" };
    telemetry::init_logging(config.log_format, level);

    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("confab: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::run(cli.command, config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // `{:#}` prints the context chain on one line, no backtrace.
            eprintln!("confab: {e:#}");
            ExitCode::FAILURE
        }
    }
}
