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
        Command::Config {
            command: ConfigCommand::Default,
        } => {
            print!("{}", config::DEFAULT_TOML);
            ExitCode::SUCCESS
        }
    }
}
