//! Another Rust service pricing a product with the recommendation library.
//!
//! ```text
//! cargo run --release -p recommend --example recommend_price -- run 85123A
//! ```
//! (`run` is the output of `cargo xtask pipeline`; `s3://bucket/prefix` works too.)

use recommend::{PriceRequest, Recommender};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let artifacts = args.next().unwrap_or_else(|| "run".into());
    let stockcode = args.next().unwrap_or_else(|| "85123A".into());

    let store = lineage::open_store(&artifacts)?;
    let recommender = Recommender::load(store.as_ref())?;
    let rec = recommender.recommend(&PriceRequest::new(stockcode).bins(100))?;

    println!(
        "{} ({}): charge £{:.2} → {:.1} units per order line, £{:.2} predicted sales",
        rec.stockcode,
        rec.description,
        rec.optimal_unit_price,
        rec.optimal_quantity,
        rec.max_predicted_sales
    );
    println!(
        "grid £{:.2}-£{:.2} ({}), model {} v{}, {} recent sales as contexts",
        rec.grid.unitprice_min,
        rec.grid.unitprice_max,
        rec.grid.rule,
        rec.model,
        rec.model_version,
        rec.contexts
    );
    Ok(())
}
