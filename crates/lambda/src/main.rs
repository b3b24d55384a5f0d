//! `price-lambda`: the AWS Lambda function (HTTP API, REST API, Function URL
//! or ALB events) answering with the same router as the local server.

use anyhow::Context;

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .without_time()
        .init();
    let app = tokio::task::spawn_blocking(lambda::app_from_env)
        .await?
        .context("loading the price-recommendation service")?;
    app.spawn_reloader(Default::default());
    lambda_http::run(lambda::lambda_router(&app)).await
}
