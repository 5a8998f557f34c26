//! `cli/`: the clap commands. `serve` runs the registry; `gc`, `verify`, `import`,
//! `export`, `inventory`, `prefetch` and `client-config` work on a data directory
//! (through a running server, or one started in-process); `config check` prints the
//! resolved configuration or names the source of a bad value.
//!
//! May import: app, airgap, auth, config, meta, service, upstream, manifest, digest,
//! names. Nothing imports it but `main`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

mod client_config;
mod prefetch;

use crate::config::{self, LogFormat, Overrides};

#[derive(Parser)]
#[command(name = "wharfie", version, about = "An OCI registry and pull-through cache")]
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

/// How import/export reach a registry.
#[derive(Args, Clone)]
struct RemoteArgs {
    /// A registry URL to talk to instead of this machine's server.
    #[arg(long)]
    server: Option<String>,
    /// Credentials as USER:PASSWORD, when the server requires them.
    #[arg(long)]
    creds: Option<String>,
    /// CA certificates (PEM) to trust when the server speaks TLS (`[tls]` in the
    /// configuration, or an https:// --server) with a certificate from a private CA.
    #[arg(long)]
    ca_file: Option<PathBuf>,
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
    /// Import images: `docker save` tarballs (plain or gzipped), OCI image layout
    /// directories and OCI archives and bundles (plain, gzip or zstd; `-` reads
    /// stdin). Images commit one by one; a re-run skips what already landed. Talks to
    /// the running server, or starts one in-process on the data directory when none
    /// holds it.
    Import {
        #[command(flatten)]
        cfg: ConfigArgs,
        /// Files or directories to import.
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
        /// Put every image into this repository (and tag, if given) instead of the
        /// names the archive carries.
        #[arg(long, value_name = "NAME[:TAG]")]
        repo: Option<String>,
        /// No progress bars and no progress lines (errors still go to stderr).
        #[arg(long, short)]
        quiet: bool,
        /// Print a JSON summary on stdout (imported, skipped, refused with the
        /// missing digests).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Export images as one bundle: an OCI image layout as a tar (`.tar.zst` and
    /// `.tar.gz` compress) or a directory (`--dir`). A full bundle is what `skopeo
    /// copy oci-archive:FILE:TAG …` and `podman load -i FILE` read.
    Export {
        #[command(flatten)]
        cfg: ConfigArgs,
        /// Images: REPO:TAG, REPO@DIGEST, REPO (every tag) or a mirrored name
        /// (docker.io/library/nginx:1.27, fetched through the mirror if not cached).
        images: Vec<String>,
        /// A file of images, one per line (`#` starts a comment).
        #[arg(long, value_name = "FILE")]
        images_from: Option<PathBuf>,
        /// Only this platform of multi-platform images (os/arch[/variant]).
        #[arg(long)]
        platform: Option<String>,
        /// The far side's inventory (`wharfie inventory -o FILE` there): leave out
        /// every blob and manifest it holds.
        #[arg(long, value_name = "FILE")]
        have: Option<PathBuf>,
        /// Write an OCI layout directory instead of a tar.
        #[arg(long)]
        dir: bool,
        /// The bundle to write.
        #[arg(short, long)]
        output: PathBuf,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Write what this registry holds (every blob and manifest digest, with sizes)
    /// as JSON: the `--have` of an incremental `wharfie export` on the connected side.
    Inventory {
        #[command(flatten)]
        cfg: ConfigArgs,
        /// The file to write (`-`: stdout).
        #[arg(short, long)]
        output: PathBuf,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Pull images through the server's mirror ahead of a deploy.
    ///
    /// So that the deploy's pulls are cache hits: the manifest (every platform of an index, or those
    /// --platform names), then every config and layer, read to the end and dropped.
    /// Prints per image what the server already held and what it fetched now (its
    /// `Wharfie-Cache` header); exits 1 when an image failed, naming the OCI error.
    /// Talks to the running server (or --server), else starts one in-process on the
    /// data directory.
    Prefetch {
        #[command(flatten)]
        cfg: ConfigArgs,
        /// Images as clients name them on this registry: REPO[:TAG] (default tag
        /// `latest`) or REPO@sha256:…, e.g. docker.io/library/nginx:1.27.
        #[arg(required = true, value_name = "IMAGE")]
        images: Vec<String>,
        /// Only this platform of multi-platform images (os/arch[/variant]); repeat
        /// for more.
        #[arg(long, value_name = "OS/ARCH")]
        platform: Vec<String>,
        /// Blobs fetched at once.
        #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=32))]
        jobs: u16,
        /// No progress bar and no progress lines (the summary still prints).
        #[arg(long, short)]
        quiet: bool,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Print containerd hosts.toml, podman registries.conf and Docker daemon.json
    /// snippets that point those clients at this server.
    ClientConfig {
        #[command(flatten)]
        cfg: ConfigArgs,
        /// The host:port clients reach this server at (default: the listen address).
        #[arg(long)]
        host: Option<String>,
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
        let o = Overrides { listen: self.listen.clone(), data_dir: self.data_dir.clone() };
        config::load(self.config.as_deref(), &o)
    }

    /// The resolved configuration of a command that runs on it; a bad one is reported on
    /// stderr, and is exit 2.
    fn settings(&self) -> Result<config::Settings, ExitCode> {
        self.load().map(|(_, s)| s).map_err(|e| {
            eprintln!("wharfie: configuration error: {e}");
            ExitCode::from(2)
        })
    }
}

/// Logs go to stderr; `RUST_LOG` overrides `default_level`. Then the warnings loading
/// the configuration left for the log.
fn init_tracing(settings: &config::Settings, default_level: &str) {
    init_subscriber(settings.log_format, default_level);
    for v in &settings.ignored_env {
        match &v.nearest {
            Some(n) => tracing::warn!(variable = %v.name, nearest = %n, "{v}"),
            None => tracing::warn!(variable = %v.name, "{v}"),
        }
    }
}

fn init_subscriber(format: LogFormat, default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    // Colour only for a terminal: journald and log files get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let b = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
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
            let settings = match args.settings() {
                Ok(s) => s,
                Err(code) => return code,
            };
            init_tracing(&settings, "info");
            match crate::app::serve_blocking(settings) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "wharfie stopped");
                    eprintln!("wharfie: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Config { command: ConfigCommand::Check(args) } => {
            for v in config::ignored_env_vars() {
                eprintln!("warning: {v}");
            }
            config_check(&args)
        }
        Command::ClientConfig { cfg, host } => match cfg.settings() {
            Ok(s) => {
                let host = host.unwrap_or_else(|| s.listen.to_string());
                print!("{}", client_config::render(&s, &host));
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::Import { cfg, inputs, repo, quiet, json, remote } => {
            let target = match repo.as_deref().map(parse_target).transpose() {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("wharfie: --repo: {e}");
                    return ExitCode::from(2);
                }
            };
            with_client(&cfg, &remote, |client| {
                let ui = crate::airgap::Ui::new(quiet);
                let r = crate::airgap::import(client, &inputs, target.as_ref(), &ui);
                if json {
                    println!("{}", serde_json::to_string(&r).unwrap_or_default());
                } else {
                    println!(
                        "imported {} image(s), skipped {} already imported, refused {}",
                        r.imported.len(),
                        r.skipped.len(),
                        r.refused.len()
                    );
                }
                let failed = r.refused.len() + r.errors.len();
                if failed > 0 {
                    return Err(crate::airgap::AirgapError::Format(format!(
                        "{failed} image(s) or input(s) not imported (see above)"
                    )));
                }
                Ok(())
            })
        }
        Command::Export { cfg, mut images, images_from, platform, have, dir, output, remote } => {
            if let Some(f) = &images_from {
                match std::fs::read_to_string(f) {
                    Ok(text) => images.extend(
                        text.lines()
                            .map(|l| l.split('#').next().unwrap_or_default().trim())
                            .filter(|l| !l.is_empty())
                            .map(str::to_owned),
                    ),
                    Err(e) => {
                        eprintln!("wharfie: --images-from {}: {e}", f.display());
                        return ExitCode::from(2);
                    }
                }
            }
            if images.is_empty() {
                eprintln!("wharfie: export: name images, or --images-from FILE");
                return ExitCode::from(2);
            }
            let have = match have.as_deref().map(crate::airgap::bundle::Held::read).transpose() {
                Ok(h) => h,
                Err(e) => {
                    eprintln!("wharfie: --have: {e}");
                    return ExitCode::from(2);
                }
            };
            let opts = crate::airgap::ExportOptions { platform, have, dir, compression: None };
            with_client(&cfg, &remote, |client| {
                let s = crate::airgap::export(client, &images, &output, &opts, &|m| eprintln!("{m}"))?;
                println!(
                    "wrote {}: {} image(s), {} blobs, {} bytes; left out {} blobs and {} manifests the far side holds",
                    output.display(),
                    s.images.len(),
                    s.blobs,
                    s.bytes,
                    s.left_out_blobs,
                    s.left_out_manifests
                );
                Ok(())
            })
        }
        Command::Inventory { cfg, output, remote } => with_client(&cfg, &remote, |client| {
            let bytes = client.inventory(false)?.ok_or_else(|| {
                crate::airgap::AirgapError::Format(
                    "the server has no inventory endpoint (not a wharfie?)".into(),
                )
            })?;
            let held = crate::airgap::bundle::Held::parse(&bytes, "the server's inventory")?;
            if output == std::path::Path::new("-") {
                use std::io::Write as _;
                let mut out = std::io::stdout().lock();
                out.write_all(&bytes).and_then(|()| out.flush()).map_err(crate::airgap::io_err(&output))?;
            } else {
                let tmp = output.with_extension("partial");
                std::fs::write(&tmp, &bytes).map_err(crate::airgap::io_err(&tmp))?;
                std::fs::rename(&tmp, &output).map_err(crate::airgap::io_err(&output))?;
                println!(
                    "wrote {}: {} blobs, {} manifests ({})",
                    output.display(),
                    held.blobs.len(),
                    held.manifests.len(),
                    held.id.map(|d| d.to_string()).unwrap_or_default()
                );
            }
            Ok(())
        }),
        Command::Prefetch { cfg, images, platform, jobs, quiet, remote } => {
            run_prefetch(&cfg, &remote, &images, platform, jobs, quiet)
        }
        Command::Gc { cfg, dry_run, grace } => offline(&cfg, |reg, s| async move {
            let grace = grace.unwrap_or(s.gc.grace);
            let r = reg.gc(grace, dry_run).await?;
            let verb = if dry_run { "would remove" } else { "removed" };
            println!("{verb} {} manifests, {} blobs, {} bytes", r.manifests, r.blobs, r.bytes);
            Ok(ExitCode::SUCCESS)
        }),
        Command::Verify { cfg, full } => offline(&cfg, |reg, _| async move {
            let bar = indicatif::ProgressBar::new(0);
            bar.set_style(
                indicatif::ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {bytes_per_sec}")
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
            print!("{}", verify_summary(&r));
            let n = r.corrupt.len();
            if n == 0 {
                return Ok(ExitCode::SUCCESS);
            }
            // Finding corruption is the command doing its job, not a failure of it: say
            // so, and exit 1 so that a timer or a script notices.
            eprintln!(
                "wharfie: verify found {n} corrupt blob{}; each was quarantined (see above)",
                plural(n)
            );
            Ok(ExitCode::FAILURE)
        }),
        Command::Config { command: ConfigCommand::Default } => {
            print!("{}", config::DEFAULT_TOML);
            ExitCode::SUCCESS
        }
    }
}

/// `prefetch`: names checked before anything is asked, then each image in turn; a
/// summary line per image on stdout, the reasons of failures on stderr.
fn run_prefetch(
    cfg: &ConfigArgs,
    remote: &RemoteArgs,
    images: &[String],
    platforms: Vec<String>,
    jobs: u16,
    quiet: bool,
) -> ExitCode {
    let parsed: Result<Vec<_>, _> = images.iter().map(|s| prefetch::parse_image(s)).collect();
    let images = match parsed {
        Ok(v) => v,
        Err(e) => {
            eprintln!("wharfie: prefetch: {e} (expected REPO[:TAG] or REPO@sha256:…)");
            return ExitCode::from(2);
        }
    };
    if let Some(p) =
        platforms.iter().find(|p| !(2..=3).contains(&p.split('/').filter(|s| !s.is_empty()).count()))
    {
        eprintln!("wharfie: prefetch: --platform {p}: expected os/arch[/variant], e.g. linux/amd64");
        return ExitCode::from(2);
    }
    let opts = prefetch::Options { platforms, jobs: usize::from(jobs), quiet };
    with_client(cfg, remote, |client| {
        let reports = prefetch::prefetch(client, &images, &opts);
        let mut failed = 0;
        for r in &reports {
            if r.manifests.cached + r.manifests.fetched > 0 {
                println!("{}", r.summary());
            }
            if !r.errors.is_empty() {
                failed += 1;
                for e in &r.errors {
                    eprintln!("wharfie: prefetch {}: {e}", r.image);
                }
            }
        }
        if failed > 0 {
            return Err(crate::airgap::AirgapError::Format(format!(
                "{failed} of {} image{} not prefetched (see above)",
                reports.len(),
                plural(reports.len())
            )));
        }
        Ok(())
    })
}

/// `config check`: the resolved configuration on stdout, or the first bad value.
fn config_check(args: &ConfigArgs) -> ExitCode {
    match args.load() {
        Ok((raw, settings)) => match toml::to_string_pretty(&raw) {
            Ok(s) => {
                // The htpasswd file is part of the configuration: read it as `serve` will.
                if settings.auth.htpasswd.is_some() {
                    match crate::auth::Authenticator::new(settings.auth.clone()) {
                        Ok(a) => eprintln!("[auth] htpasswd: {} user(s)", a.user_count()),
                        Err(e) => {
                            eprintln!("wharfie: configuration error: [auth] htpasswd: {e}");
                            return ExitCode::from(2);
                        }
                    }
                }
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
    }
}

/// `verify`'s report as an operator reads it: totals, then each corrupt blob with what
/// is wrong, where its file went, and what the server does about it now.
fn verify_summary(r: &crate::service::gc::VerifyReport) -> String {
    use std::fmt::Write as _;
    let mut out = format!(
        "checked {} blob{} ({} bytes, {}): {} corrupt\n",
        r.checked,
        plural(r.checked),
        r.bytes,
        bytesize::ByteSize::b(r.bytes),
        r.corrupt.len()
    );
    for c in &r.corrupt {
        let origin = crate::service::gc::origin_word(c.origin);
        let _ = writeln!(out, "corrupt blob {} ({origin}, {} bytes): {}", c.digest, c.size, c.problem);
        let _ = match &c.quarantined {
            Some(p) => writeln!(out, "  the bad file was moved to {}", p.display()),
            None => writeln!(out, "  no file was left to quarantine"),
        };
        let _ = match c.origin {
            crate::meta::Origin::Pushed => writeln!(
                out,
                "  the server now answers 404 (BLOB_UNKNOWN) for it: push the image again to restore it"
            ),
            crate::meta::Origin::Mirrored => {
                writeln!(out, "  the server fetches it again from its upstream on the next pull")
            }
        };
    }
    out
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// Run `f` against the data directory with no server: open the stores (failing with a
/// clear message when a running server holds them), run, report; `f` picks the exit
/// code of a run that worked.
fn offline<F, Fut>(args: &ConfigArgs, f: F) -> ExitCode
where
    F: FnOnce(std::sync::Arc<crate::service::Registry>, config::Settings) -> Fut,
    Fut: std::future::Future<Output = Result<ExitCode, crate::service::Error>>,
{
    let settings = match args.settings() {
        Ok(s) => s,
        Err(code) => return code,
    };
    init_tracing(&settings, "warn");
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
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
                if matches!(e, crate::app::AppError::Meta(crate::meta::MetaError::Locked)) {
                    eprintln!(
                        "wharfie: a running server holds {}; stop it first",
                        settings.data_dir.display()
                    );
                }
                return ExitCode::FAILURE;
            }
        };
        match f(reg, settings).await {
            Ok(code) => code,
            Err(e) => {
                eprintln!("wharfie: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

fn parse_target(s: &str) -> Result<crate::airgap::ImportTarget, String> {
    let (name, tag) = match s.rsplit_once(':') {
        Some((n, t)) if !t.contains('/') => (n, Some(t)),
        _ => (s, None),
    };
    let repo = crate::names::RepoName::parse(name).map_err(|e| e.to_string())?;
    let tag = tag.map(crate::names::Tag::parse).transpose().map_err(|e| e.to_string())?;
    Ok(crate::airgap::ImportTarget { repo, tag })
}

/// Run a registry client: against `--server`, else the running server (when it holds
/// the data directory), else a server started in-process on the data directory for
/// the duration of `f`.
fn with_client(
    args: &ConfigArgs,
    remote: &RemoteArgs,
    f: impl FnOnce(&crate::upstream::client::RegistryClient) -> Result<(), crate::airgap::AirgapError>,
) -> ExitCode {
    let settings = match args.settings() {
        Ok(s) => s,
        Err(code) => return code,
    };
    init_tracing(&settings, "warn");
    let creds = remote.creds.as_deref().map(|c| {
        c.split_once(':').map_or((c.to_owned(), String::new()), |(u, p)| (u.to_owned(), p.to_owned()))
    });
    let run = |base: &str| -> ExitCode {
        let ca = remote.ca_file.as_deref();
        let client = match crate::upstream::client::RegistryClient::new(base, creds.clone(), ca) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("wharfie: {e}");
                return ExitCode::FAILURE;
            }
        };
        if let Err(e) = client.ping() {
            eprintln!("wharfie: no registry at {base}: {e}");
            return ExitCode::FAILURE;
        }
        match f(&client) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("wharfie: {e}");
                ExitCode::FAILURE
            }
        }
    };
    if let Some(url) = &remote.server {
        return run(url);
    }
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("wharfie: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // A private loopback server for this one command, holding the data directory the
    // command could open anyway: plain HTTP, auth off (`--creds` are for remote servers).
    let listener = match rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("wharfie: cannot listen on loopback: {e}");
            return ExitCode::FAILURE;
        }
    };
    let server = crate::app::Server::new(settings.clone())
        .listeners(vec![listener])
        .tls(false)
        .authenticator(std::sync::Arc::new(crate::auth::Authenticator::disabled()));
    let started = match rt.block_on(server.start()) {
        Ok(s) => s,
        Err(crate::app::AppError::Meta(crate::meta::MetaError::Locked)) => {
            // A server holds the data directory: talk to it.
            let mut addr = settings.listen;
            if addr.ip().is_unspecified() {
                addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
            // It speaks TLS when the configuration says so (trust its CA with --ca-file).
            let scheme = if settings.tls.is_some() { "https" } else { "http" };
            return run(&format!("{scheme}://{addr}"));
        }
        Err(e) => {
            eprintln!("wharfie: {e}");
            return ExitCode::FAILURE;
        }
    };
    let Some(base) = started.addrs().first().map(|a| format!("http://{a}")) else {
        eprintln!("wharfie: the in-process server has no listener");
        return ExitCode::FAILURE;
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = rt.spawn(started.run(async {
        let _ = stop_rx.await;
    }));
    let code = run(&base);
    let _ = stop_tx.send(());
    let _ = rt.block_on(server);
    code
}
