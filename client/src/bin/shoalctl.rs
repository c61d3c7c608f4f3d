//! `shoalctl`: Shoal's admin CLI. See `shoal_client::cli`.
use clap::Parser;

#[tokio::main]
async fn main() {
    let cli = shoal_client::cli::Cli::parse();
    if let Err(e) = shoal_client::cli::run(cli).await {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
