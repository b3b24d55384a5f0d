//! `serve`: the local price-recommendation server and pricing console (port
//! 5002, as the original). The command line lives in [`serve::cli`], shared
//! with `cargo xtask serve`.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    serve::cli::run(serve::cli::Args::parse()).await?;
    Ok(())
}
