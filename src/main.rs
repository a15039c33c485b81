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
    if matches!(cli.command, Command::Serve { .. }) {
        tune_allocator();
    }
    // Before any thread starts: it sets environment variables.
    if let Some(path) = &cli.env_file
        && let Err(e) = cli::load_env_file(path)
    {
        eprintln!("confab: {e:#}");
        return ExitCode::from(2);
    }
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
    match runtime.block_on(cli::run(cli.command, config, cli.config, cli.env_file)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // `{:#}` prints the context chain on one line, no backtrace.
            eprintln!("confab: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// glibc's allocator settings for the server, measured on a release build (RELIABILITY.md,
/// "Memory after a storm"): at most 2 arenas, and blocks of 1 MiB or more straight from and
/// back to the kernel. With glibc's defaults, 3 storms of 200 parallel logins (each password
/// hash holds 19 MiB) left the idle server at 232 MiB (baseline 39); with these, at 22 MiB
/// (baseline 18).
///
/// glibc reads them from the environment at start-up only, so when they are missing `serve`
/// sets them and executes itself again (same process, same arguments): the quick start gets
/// what the systemd unit and the image set. Variables the operator set are left alone.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::os::unix::process::CommandExt as _;
        const SETTINGS: [(&str, &str); 2] = [("MALLOC_ARENA_MAX", "2"), ("MALLOC_MMAP_THRESHOLD_", "1048576")];
        if SETTINGS.iter().all(|(key, _)| std::env::var_os(key).is_some()) {
            return;
        }
        let Ok(exe) = std::env::current_exe() else { return };
        let mut cmd = std::process::Command::new(exe);
        cmd.args(std::env::args_os().skip(1));
        for (key, value) in SETTINGS {
            if std::env::var_os(key).is_none() {
                cmd.env(key, value);
            }
        }
        // Returns only if the exec failed; then run with glibc's defaults.
        let err = cmd.exec();
        eprintln!("confab: could not apply the allocator settings ({err}); running with glibc's defaults");
    }
}
