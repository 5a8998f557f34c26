//! `cli/`: the clap commands. `serve` runs the registry; `config check` prints the
//! resolved configuration or names the source of a bad value.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::config::{self, LogFormat, Overrides};

#[derive(Parser)]
#[command(
    name = "wharfie",
    version,
    about = "An OCI registry and pull-through cache"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct ConfigArgs {
    /// TOML configuration file.
    #[arg(long, env = "WHARFIE_CONFIG")]
    config: Option<PathBuf>,
    /// Listen address (host:port), overriding the configuration.
    #[arg(long)]
    listen: Option<String>,
    /// Data directory, overriding the configuration.
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the registry.
    Serve(ConfigArgs),
    /// Collect garbage: unreferenced manifests and blobs (the server also runs this on
    /// its schedule). Needs the data directory, so run it while the server is stopped.
    Gc {
        #[command(flatten)]
        cfg: ConfigArgs,
        /// Report what would be removed; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Override the grace period (e.g. "0s" to collect everything unreferenced).
        #[arg(long, value_parser = humantime::parse_duration)]
        grace: Option<std::time::Duration>,
    },
    /// Re-hash every blob (blake3; sha256 with --full); quarantine corrupt ones.
    Verify {
        #[command(flatten)]
        cfg: ConfigArgs,
        #[arg(long)]
        full: bool,
    },
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print the resolved configuration, or the first bad value and where it came from.
    Check(ConfigArgs),
    /// Print the commented default configuration file.
    Default,
}

impl ConfigArgs {
    fn load(&self) -> Result<(config::RawConfig, config::Settings), config::ConfigError> {
        let o = Overrides {
            listen: self.listen.clone(),
            data_dir: self.data_dir.clone(),
        };
        config::load(self.config.as_deref(), &o)
    }
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => b.init(),
        LogFormat::Json => b.json().init(),
    }
}

/// Parse the command line and run; the exit code says how it went.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            let (_, settings) = match args.load() {
                Ok(v) => v,
                Err(e) => {
                    eprintln!("wharfie: configuration error: {e}");
                    return ExitCode::from(2);
                }
            };
            init_tracing(settings.log_format);
            match crate::app::serve_blocking(settings) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "wharfie stopped");
                    eprintln!("wharfie: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Config {
            command: ConfigCommand::Check(args),
        } => match args.load() {
            Ok((raw, _)) => match toml::to_string_pretty(&raw) {
                Ok(s) => {
                    println!("{s}");
                    eprintln!("configuration ok");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("wharfie: cannot print the configuration: {e}");
                    ExitCode::FAILURE
                }
            },
            Err(e) => {
                eprintln!("wharfie: configuration error: {e}");
                ExitCode::from(2)
            }
        },
        Command::Gc {
            cfg,
            dry_run,
            grace,
        } => offline(&cfg, |reg, s| async move {
            let grace = grace.unwrap_or(s.gc.grace);
            let r = reg.gc(grace, dry_run).await?;
            let verb = if dry_run { "would remove" } else { "removed" };
            println!(
                "{verb} {} manifests, {} blobs, {} bytes",
                r.manifests, r.blobs, r.bytes
            );
            Ok(())
        }),
        Command::Verify { cfg, full } => offline(&cfg, |reg, _| async move {
            let bar = indicatif::ProgressBar::new(0);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:40} {bytes}/{total_bytes} {bytes_per_sec}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            let b2 = bar.clone();
            let r = reg
                .verify(full, move |done, total| {
                    b2.set_length(total);
                    b2.set_position(done);
                })
                .await?;
            bar.finish_and_clear();
            println!(
                "checked {} blobs ({} bytes), {} corrupt",
                r.checked,
                r.bytes,
                r.corrupt.len()
            );
            for d in &r.corrupt {
                println!("corrupt (quarantined): {d}");
            }
            if r.corrupt.is_empty() {
                Ok(())
            } else {
                Err(crate::service::Error::Internal(format!(
                    "{} corrupt blobs",
                    r.corrupt.len()
                )))
            }
        }),
        Command::Config {
            command: ConfigCommand::Default,
        } => {
            print!("{}", config::DEFAULT_TOML);
            ExitCode::SUCCESS
        }
    }
}

/// Run `f` against the data directory with no server: open the stores (failing with a
/// clear message when a running server holds them), run, report.
fn offline<F, Fut>(args: &ConfigArgs, f: F) -> ExitCode
where
    F: FnOnce(std::sync::Arc<crate::service::Registry>, config::Settings) -> Fut,
    Fut: std::future::Future<Output = Result<(), crate::service::Error>>,
{
    let settings = match args.load() {
        Ok((_, s)) => s,
        Err(e) => {
            eprintln!("wharfie: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    init_tracing(settings.log_format);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("wharfie: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let reg = match crate::app::open(&settings).await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("wharfie: {e}");
                if e.to_string().contains("already open") {
                    eprintln!(
                        "wharfie: a running server holds {}; stop it first",
                        settings.data_dir.display()
                    );
                }
                return ExitCode::FAILURE;
            }
        };
        match f(reg, settings).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("wharfie: {e}");
                ExitCode::FAILURE
            }
        }
    })
}
