//! The `gatehouse` binary: `serve`, the policy tool chain, and operator commands.

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use gatehouse::app::App;
use gatehouse::config::Config;
use gatehouse::policy::{CaseRunner, Limits, PolicyEngine};
use gatehouse_rules::cases;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

mod client;
mod client_admin;

/// mimalloc instead of glibc malloc: see decision 81.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "gatehouse",
    version,
    about = "Multi-tenant identity edge: SCIM 2.0, SSO, edge token evaluation, policy in WebAssembly"
)]
struct Cli {
    /// Print client commands' answers as JSON.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (embedded store, built-in default policy; nothing else to set up).
    Serve(ServeArgs),
    /// Run an edge: token evaluation next to the gateways, from a local replica fed by the
    /// control plane's change log (docs/operating.md, "Edge fleet").
    Edge(EdgeArgs),
    /// Issue, list and revoke edge credentials on a running control plane (operator).
    #[command(subcommand)]
    EdgeCredential(client_admin::EdgeCredentialCommand),
    /// Build, test and push tenant policies.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Manage tenants on a running server (GATEHOUSE_URL, GATEHOUSE_TOKEN).
    #[command(subcommand)]
    Tenant(client::TenantCommand),
    /// Manage a tenant's users on a running server.
    #[command(subcommand)]
    User(client::UserCommand),
    /// Manage a tenant's teams on a running server.
    #[command(subcommand)]
    Team(client::TeamCommand),
    /// Migrate a tenant from a legacy export (docs/migration.md) on a running server.
    #[command(subcommand)]
    Migrate(client::MigrateCommand),
    /// Manage a tenant's identity providers (JWT issuers) on a running server.
    #[command(subcommand)]
    Idp(client_admin::IdpCommand),
    /// Manage a tenant's SSO configurations and their SCIM tokens on a running server.
    #[command(subcommand)]
    Sso(client_admin::SsoCommand),
    /// Manage a tenant's resources and their collaborators on a running server.
    #[command(subcommand)]
    Resource(client_admin::ResourceCommand),
    /// Manage a tenant's virtual accounts and their tokens on a running server.
    #[command(subcommand)]
    Va(client_admin::VaCommand),
    /// Read a tenant's audit log on a running server.
    #[command(subcommand)]
    Audit(client_admin::AuditCommand),
}

#[derive(Args)]
struct ServeArgs {
    /// Address to listen on (port 0 picks a free one). Overrides config and environment.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Directory of the embedded store. Overrides config and environment.
    #[arg(long)]
    data: Option<PathBuf>,
    /// TOML configuration file.
    #[arg(long)]
    config: Option<PathBuf>,
    /// PostgreSQL URL: run as one of any number of equal replicas on that database instead
    /// of the embedded store. Overrides config and environment.
    #[arg(long)]
    database_url: Option<String>,
}

#[derive(Args)]
struct EdgeArgs {
    /// The control plane's base URL (any `serve` replica). Overrides config and
    /// environment (`upstream`, `GATEHOUSE_UPSTREAM`).
    #[arg(long)]
    upstream: Option<String>,
    /// Directory of the edge's local replica (sled). Overrides config and environment.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Address to listen on (port 0 picks a free one). Overrides config and environment.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// TOML configuration file.
    #[arg(long)]
    config: Option<PathBuf>,
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Scaffold a new policy crate (the default policy under a new name, with its cases).
    New {
        /// The policy's name (lowercase letters, digits, '-').
        name: String,
        /// Where to create the crate (default: ./NAME).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// The policy SDK to depend on (default: guest/sdk of the source tree this binary
        /// was built from).
        #[arg(long)]
        sdk: Option<PathBuf>,
    },
    /// Build a policy crate into a component.
    Build {
        /// The policy crate's directory.
        dir: PathBuf,
        /// Where to write the component (default: DIR/target/policy.wasm).
        #[arg(short, long)]
        out: Option<PathBuf>,
        /// Cargo's target directory for the wasm build (default: DIR/target); policies that
        /// share one reuse the dependencies they have in common.
        #[arg(long)]
        target_dir: Option<PathBuf>,
    },
    /// Build a policy crate and run its cases (DIR/cases/*.json) through the component.
    Test {
        /// The policy crate's directory.
        dir: PathBuf,
        /// Test this component instead of building DIR.
        #[arg(long)]
        component: Option<PathBuf>,
        /// Cargo's target directory for the wasm build (default: DIR/target).
        #[arg(long)]
        target_dir: Option<PathBuf>,
    },
    /// Evaluate a component on the tenant's recent decisions and list every decision it
    /// would change (nothing is stored).
    DryRun {
        #[arg(long)]
        tenant: String,
        /// The candidate component file.
        file: PathBuf,
        /// A JSON file with the candidate's settings.
        #[arg(long)]
        settings: Option<PathBuf>,
    },
    /// Explain what the tenant's active policy decides for a set of token claims, and
    /// why (claims taken as verified; nothing is recorded). `--json` prints the answer.
    Explain {
        #[arg(long)]
        tenant: String,
        /// A JSON file with the token's claims (an object).
        #[arg(long)]
        token_claims: PathBuf,
        /// The identity provider by name (default: the one whose issuer is `iss`).
        #[arg(long)]
        idp: Option<String>,
    },
    /// Upload a component to a tenant on a running server and activate it.
    Push {
        #[arg(long)]
        tenant: String,
        /// The component file.
        file: PathBuf,
        /// A JSON file with the policy's settings.
        #[arg(long)]
        settings: Option<PathBuf>,
        /// A directory of cases the server runs before accepting the upload.
        #[arg(long)]
        cases: Option<PathBuf>,
        /// Store the version without activating it.
        #[arg(long)]
        no_activate: bool,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(args),
        Command::Edge(args) => edge(args),
        Command::EdgeCredential(command) => {
            client_admin::edge_credential(&client::Api::from_env(cli.json)?, command)
        }
        Command::Policy(command) => policy(command, cli.json),
        Command::Tenant(command) => client::tenant(&client::Api::from_env(cli.json)?, command),
        Command::User(command) => client::user(&client::Api::from_env(cli.json)?, command),
        Command::Team(command) => client::team(&client::Api::from_env(cli.json)?, command),
        Command::Migrate(command) => client::migrate(&client::Api::from_env(cli.json)?, command),
        Command::Idp(command) => client_admin::idp(&client::Api::from_env(cli.json)?, command),
        Command::Sso(command) => client_admin::sso(&client::Api::from_env(cli.json)?, command),
        Command::Resource(command) => {
            client_admin::resource(&client::Api::from_env(cli.json)?, command)
        }
        Command::Va(command) => client_admin::va(&client::Api::from_env(cli.json)?, command),
        Command::Audit(command) => client_admin::audit(&client::Api::from_env(cli.json)?, command),
    }
}

/// The configuration (file, then environment), with `--listen` and `--data` on top.
fn load_config(
    file: Option<&Path>,
    listen: Option<SocketAddr>,
    data: Option<PathBuf>,
) -> Result<Config> {
    let mut config = Config::load(file, std::env::vars())?;
    if let Some(listen) = listen {
        config.listen = listen;
    }
    if let Some(data) = data {
        config.data = data;
    }
    Ok(config)
}

/// Binds `addr` and prints the `listening on` line, stdout's first (tests wait for it).
async fn listen(addr: SocketAddr) -> Result<(tokio::net::TcpListener, SocketAddr)> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let addr = listener.local_addr()?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "listening on http://{addr}")?;
    stdout.flush()?;
    Ok((listener, addr))
}

fn serve(args: ServeArgs) -> Result<()> {
    let mut config = load_config(args.config.as_deref(), args.listen, args.data)?;
    if let Some(url) = args.database_url {
        config.database_url = Some(url);
    }
    let _log_guard = gatehouse::logging::init(config.log_format, config.log_queue_lines);
    gatehouse::http::install_metrics_recorder();
    let (app, generated_token) = App::open(&config).context("starting gatehouse")?;
    if let Some(token) = generated_token {
        // stderr: stdout's first line is reserved for `listening on`.
        eprintln!(
            "operator token (shown once; set GATEHOUSE_OPERATOR_TOKEN to choose your own): {token}"
        );
    }
    let app = Arc::new(app);
    // On a shared database: follows the other replicas' writes; on both: prunes the log.
    let tailer =
        gatehouse::app::replica::Tailer::start(app.clone(), config.store.change_log_retention);
    let relay = gatehouse::outbox::Relay::new(app.clone(), &config)
        .context("configuring the outbox relay")?;
    if relay.is_none() {
        tracing::info!(
            "no SMTP configured: emails stay in the outbox (GET /api/v1/tenants/{{tenant}}/outbox)"
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let relay = relay.map(gatehouse::outbox::Relay::spawn);
        let (listener, addr) = listen(config.listen).await?;
        tracing::info!(%addr, data = %config.data.display(), tenants = app.policies.len(), "gatehouse serving");
        gatehouse::http::serve(app.clone(), listener, shutdown_signal()).await?;
        if let Some(relay) = relay {
            relay.stop().await;
        }
        anyhow::Ok(())
    })?;
    drop(tailer);
    app.store.flush().context("flushing the store")?;
    tracing::info!("stopped");
    Ok(())
}

fn edge(args: EdgeArgs) -> Result<()> {
    let mut config = load_config(args.config.as_deref(), args.listen, args.data)?;
    if let Some(upstream) = args.upstream {
        config.upstream = Some(upstream);
    }
    let Some(upstream) = config.upstream.clone() else {
        bail!("an edge needs the control plane's URL: --upstream URL (or GATEHOUSE_UPSTREAM)");
    };
    let Some(token) = config.edge_token()? else {
        bail!("an edge needs its credential: GATEHOUSE_EDGE_TOKEN or edge_token_file (issued with `gatehouse edge-credential issue`)");
    };
    let _log_guard = gatehouse::logging::init(config.log_format, config.log_queue_lines);
    gatehouse::http::install_metrics_recorder();
    let app = Arc::new(App::open_edge(&config).context("starting the edge")?);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let (listener, addr) = listen(config.listen).await?;
        tracing::info!(%addr, data = %config.data.display(), upstream, tenants = app.policies.len(), "gatehouse edge serving");
        let follower = tokio::spawn(gatehouse::app::edge_sync::follow_upstream(
            app.clone(),
            upstream,
            token,
        ));
        gatehouse::http::serve_edge(app.clone(), listener, shutdown_signal()).await?;
        follower.abort();
        anyhow::Ok(())
    })?;
    app.store.flush().context("flushing the store")?;
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler installs");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down: finishing requests in flight");
}

fn policy(command: PolicyCommand, json: bool) -> Result<()> {
    match command {
        PolicyCommand::New { name, dir, sdk } => {
            let dir = dir.unwrap_or_else(|| PathBuf::from(&name));
            let sdk = sdk.unwrap_or_else(gatehouse::scaffold::default_sdk_dir);
            let files = gatehouse::scaffold::new_policy(&name, &dir, &sdk)?;
            println!("created policy {name} in {}:", dir.display());
            for file in files {
                println!("  {file}");
            }
            println!(
                "next: gatehouse policy test {}  (builds it and runs its cases)",
                dir.display()
            );
            Ok(())
        }
        PolicyCommand::Build {
            dir,
            out,
            target_dir,
        } => {
            let component = build_policy(&dir, target_dir)?;
            let out = out.unwrap_or_else(|| dir.join("target").join("policy.wasm"));
            if let Some(parent) = out.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(&out, &component)
                .with_context(|| format!("writing {}", out.display()))?;
            println!("built {} ({} bytes)", out.display(), component.len());
            Ok(())
        }
        PolicyCommand::Test {
            dir,
            component,
            target_dir,
        } => {
            let bytes = match component {
                Some(path) => {
                    std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?
                }
                None => build_policy(&dir, target_dir)?,
            };
            test_policy(&bytes, &dir.join("cases"))
        }
        PolicyCommand::DryRun {
            tenant,
            file,
            settings,
        } => dry_run_policy(&tenant, &file, settings.as_deref()),
        PolicyCommand::Explain {
            tenant,
            token_claims,
            idp,
        } => explain_policy(&tenant, &token_claims, idp.as_deref(), json),
        PolicyCommand::Push {
            tenant,
            file,
            settings,
            cases,
            no_activate,
        } => push_policy(
            &tenant,
            &file,
            settings.as_deref(),
            cases.as_deref(),
            !no_activate,
        ),
    }
}

fn build_policy(dir: &Path, target_dir: Option<PathBuf>) -> Result<Vec<u8>> {
    let target = target_dir.unwrap_or_else(|| dir.join("target"));
    gatehouse_policy_build::build(dir, &target)
        .with_context(|| format!("building the policy in {}", dir.display()))
}

fn test_policy(component: &[u8], cases_dir: &Path) -> Result<()> {
    let engine = PolicyEngine::new(Limits::default())?;
    let compiled = engine.compile(component)?;
    let cases = cases::load_dir(cases_dir)?;
    if cases.is_empty() {
        bail!(
            "no cases in {}: add *.json files with input and expected decision",
            cases_dir.display()
        );
    }
    let mut runner = CaseRunner::new(&engine, &compiled);
    let mut failed = 0;
    for (file, case) in &cases {
        let report = case.run(&mut runner);
        if report.passed {
            println!("ok    {file}: {}", report.name);
        } else {
            failed += 1;
            println!("FAIL  {file}: {}", report.name);
            println!("      expected: {}", report.expected);
            println!("      actual:   {}", report.actual);
        }
    }
    println!("{} passed, {} failed", cases.len() - failed, failed);
    if failed > 0 {
        bail!("{failed} of {} cases failed", cases.len());
    }
    Ok(())
}

fn read_settings(settings: Option<&Path>) -> Result<serde_json::Value> {
    Ok(match settings {
        Some(path) => serde_json::from_str(&std::fs::read_to_string(path)?)
            .with_context(|| format!("{} is not JSON", path.display()))?,
        None => serde_json::json!({}),
    })
}

fn dry_run_policy(tenant: &str, file: &Path, settings: Option<&Path>) -> Result<()> {
    use base64::Engine;
    let component = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let body = serde_json::json!({
        "component_base64": base64::engine::general_purpose::STANDARD.encode(&component),
        "settings": read_settings(settings)?,
    });
    let api = client::Api::from_env(false)?;
    let report = api.call(
        reqwest::Method::POST,
        &format!("/api/v1/tenants/{tenant}/policy/dry-run"),
        Some(body),
    )?;
    let changed = report["changed"].as_array().cloned().unwrap_or_default();
    for change in &changed {
        println!(
            "changed {}: {}",
            change["decision"].as_str().unwrap_or("?"),
            change["input"]
        );
        println!("  before: {}", change["before"]);
        println!("  after:  {}", change["after"]);
    }
    println!(
        "{} of {} recent decisions would change",
        changed.len(),
        report["evaluated"]
    );
    Ok(())
}

fn explain_policy(tenant: &str, claims: &Path, idp: Option<&str>, json: bool) -> Result<()> {
    let text =
        std::fs::read_to_string(claims).with_context(|| format!("reading {}", claims.display()))?;
    let claims: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", claims.display()))?;
    if !claims.is_object() {
        bail!("the token claims must be a JSON object");
    }
    let mut body = serde_json::json!({ "claims": claims });
    if let Some(idp) = idp {
        body["idp"] = idp.into();
    }
    let api = client::Api::from_env(json)?;
    let report = api.call(
        reqwest::Method::POST,
        &format!("/api/v1/tenants/{tenant}/policy/explain"),
        Some(body),
    )?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", explanation_text(&report));
    }
    Ok(())
}

/// The explain answer as a report a person reads top to bottom.
fn explanation_text(r: &serde_json::Value) -> String {
    use std::fmt::Write as _;
    let s = |v: &serde_json::Value| match v {
        serde_json::Value::Null => "-".to_owned(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let list = |v: &serde_json::Value| v.as_array().cloned().unwrap_or_default();
    let mut out = String::new();
    let version = match &r["policy_version"] {
        serde_json::Value::Null => "built-in default".to_owned(),
        v => format!("version {v}"),
    };
    let _ = writeln!(
        out,
        "policy:      {} {} ({version}, contract {})",
        s(&r["policy"]["name"]),
        s(&r["policy"]["version"]),
        s(&r["policy"]["contract"])
    );
    let _ = writeln!(
        out,
        "idp:         {} (chosen by {})",
        s(&r["idp"]),
        s(&r["idp_chosen_by"])
    );
    let map = &r["claim_map"];
    if !map.is_null() {
        let _ = writeln!(
            out,
            "claim map:   user <- {}, va name <- {}, teams <- {}, extra <- {}",
            s(&map["user_claim"]),
            s(&map["va_name_claim"]),
            s(&map["team_claim"]),
            s(&map["extra_claims"])
        );
    }
    let x = &r["extracted"];
    if !x.is_null() {
        let _ = writeln!(
            out,
            "extracted:   user {}, va name {}, teams {}, extra {}",
            s(&x["user_claim"]),
            s(&x["va_name"]),
            s(&x["team_values"]),
            s(&x["extra"])
        );
    }
    let c = &r["candidates"];
    if !c.is_null() {
        let _ = writeln!(out, "candidates:");
        for va in list(&c["virtual_accounts"]) {
            let _ = writeln!(
                out,
                "  virtual account {} ({}, {})",
                s(&va["id"]),
                s(&va["name"]),
                if va["enabled"] == true {
                    "enabled"
                } else {
                    "disabled"
                }
            );
        }
        for u in list(&c["users"]) {
            let _ = writeln!(
                out,
                "  user {} ({}, {}, matched by {}, teams {})",
                s(&u["id"]),
                s(&u["email"]),
                s(&u["status"]),
                s(&u["matched_by"]),
                s(&u["teams"])
            );
        }
        for t in list(&c["teams"]) {
            let _ = writeln!(
                out,
                "  team {} ({}, matched {})",
                s(&t["id"]),
                s(&t["name"]),
                s(&t["matched"])
            );
        }
        if list(&c["virtual_accounts"]).is_empty()
            && list(&c["users"]).is_empty()
            && list(&c["teams"]).is_empty()
        {
            let _ = writeln!(out, "  (none)");
        }
    }
    let _ = writeln!(out, "trace:");
    for line in list(&r["trace"]) {
        let _ = writeln!(out, "  - {}", s(&line));
    }
    let resolution = &r["resolution"];
    if !resolution.is_null() {
        let _ = writeln!(out, "resolution:  {resolution}");
    }
    let identity = &r["identity"];
    if identity.is_object() {
        let _ = writeln!(
            out,
            "result:      ALLOW {} {} ({}), teams {}, role {}",
            s(&identity["kind"]),
            s(&identity["id"]),
            s(if identity["email"].is_null() {
                &identity["name"]
            } else {
                &identity["email"]
            }),
            s(&identity["teams"]),
            s(&identity["tenant_role"])
        );
    }
    let refusal = &r["refusal"];
    if refusal.is_object() {
        let _ = writeln!(
            out,
            "result:      REFUSE {} (by the {}): {}",
            s(&refusal["reason"]),
            s(&refusal["by"]),
            s(&refusal["message"])
        );
    }
    let error = &r["policy_error"];
    if error.is_object() {
        let _ = writeln!(
            out,
            "result:      REFUSE policy_error ({}): {}",
            s(&error["kind"]),
            s(&error["message"])
        );
    }
    let role = &r["role"];
    if role.is_object() {
        let _ = writeln!(
            out,
            "role:        {} ({}) from manual {} and team roles {}",
            s(&role["decision"]["role"]),
            s(&role["decision"]["source"]),
            s(&role["input"]["manual"]),
            s(&role["input"]["team_roles"])
        );
        for line in list(&role["trace"]) {
            let _ = writeln!(out, "  - {}", s(&line));
        }
        if let Some(note) = role["note"].as_str() {
            let _ = writeln!(out, "  ({note})");
        }
    }
    out
}

fn push_policy(
    tenant: &str,
    file: &Path,
    settings: Option<&Path>,
    cases_dir: Option<&Path>,
    activate: bool,
) -> Result<()> {
    use base64::Engine;
    let component = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let settings = read_settings(settings)?;
    let cases: Vec<cases::Case> = match cases_dir {
        Some(dir) => cases::load_dir(dir)?
            .into_iter()
            .map(|(_, case)| case)
            .collect(),
        None => Vec::new(),
    };
    let api = client::Api::from_env(false)?;
    let body = serde_json::json!({
        "component_base64": base64::engine::general_purpose::STANDARD.encode(&component),
        "settings": settings,
        "cases": cases,
        "activate": activate,
    });
    let record = api.call(
        reqwest::Method::POST,
        &format!("/api/v1/tenants/{tenant}/policy/versions"),
        Some(body),
    )?;
    println!(
        "tenant {tenant}: stored policy version {} ({} {}){}",
        record["version"],
        record["name"].as_str().unwrap_or("?"),
        record["policy_version"].as_str().unwrap_or("?"),
        if activate { ", active" } else { "" }
    );
    Ok(())
}
