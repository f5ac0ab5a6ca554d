//! The `spillway` binary: parses flags, sets up logging, runs the daemon, sets the exit code.

use clap::Parser;
use tracing_subscriber::EnvFilter;

use spillway::config::{Cli, Command, LogFormat, Settings};

fn main() -> std::process::ExitCode {
    limit_malloc_arenas();
    let cli = Cli::parse();
    match &cli.command {
        Some(Command::CheckConfig { file }) => return spillway::commands::check_config(file),
        Some(Command::Probe {
            url,
            timeout_seconds,
            ca_file,
            insecure,
        }) => {
            let trust = match (ca_file, insecure) {
                (Some(file), _) => spillway::commands::Trust::CaFile(file.clone()),
                (None, true) => spillway::commands::Trust::Anything,
                (None, false) => spillway::commands::Trust::System,
            };
            return spillway::commands::probe(
                url,
                std::time::Duration::from_secs(*timeout_seconds),
                &trust,
            );
        }
        Some(Command::CompileTransform { input, output }) => {
            return match spillway::transform::compile_to_file(input, output) {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("spillway: cannot compile {}: {e:#}", input.display());
                    std::process::ExitCode::from(2)
                }
            };
        }
        Some(Command::JqWorker { memory_bytes }) => {
            return spillway::process::sandbox::serve_worker(*memory_bytes);
        }
        None => {}
    }
    raise_open_files_limit();
    // Test builds only: faults named in FAILPOINTS (e.g. `parquet-row-group=1*panic`).
    #[cfg(feature = "failpoints")]
    let _faults = fail::FailScenario::setup();
    let settings = match Settings::load(&cli) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("spillway: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&settings.log_level));
    // Colors only on a terminal: log files, journald and container logs get plain text.
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match settings.log_format {
        LogFormat::Json => logs.json().init(),
        LogFormat::Text => logs.init(),
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("spillway: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    return_freed_memory();
    let outcome = runtime.block_on(spillway::app::run(settings));
    // Everything that matters is flushed or left in the journal by now; a blocking task still
    // running (a transform call winding down) must not hold the exit.
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("spillway: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// glibc gives each thread that allocates its own arena; the blocking threads that gzip
/// objects would each keep megabytes of freed memory. Two arenas keep peak RSS about a quarter
/// lower under load. Must run before any thread starts.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator tunable; no threads exist yet.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Each stream keeps its journal segment and lock open, so thousands of streams need thousands
/// of descriptors; many systems start processes with a soft limit of 1024 and a far higher hard
/// limit. Raise the soft limit to the hard one, as servers commonly do.
fn raise_open_files_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: reads and sets this process's own limit through a valid struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// glibc's allocator keeps memory freed in the middle of its heaps (request bodies, encoded
/// objects, row groups: megabytes each, freed in another order than allocated) and gives it
/// back to the system only at a heap's top. Once a second, hand every whole free page back
/// (`malloc_trim`), so resident memory follows what is in use instead of its high-water mark.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn return_freed_memory() {
    let _ = std::thread::Builder::new()
        .name("malloc-trim".into())
        .spawn(|| {
            loop {
                std::thread::sleep(std::time::Duration::from_secs(1));
                // SAFETY: malloc_trim only walks the allocator's own free lists under its locks.
                unsafe {
                    libc::malloc_trim(0);
                }
            }
        });
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn return_freed_memory() {}
