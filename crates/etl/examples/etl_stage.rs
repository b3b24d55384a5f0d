//! The etl stage's work alone, as a process of its own (no libtorch or other
//! stage in the binary), for measuring its peak memory and time:
//!
//! ```sh
//! cargo build --release -p etl --example etl_stage
//! /usr/bin/time -v target/release/examples/etl_stage ../shared/data/online_retail.csv.gz
//! ```

use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args_os()
        .nth(1)
        .ok_or("usage: etl_stage EXPORT.csv[.gz]")?;
    let started = Instant::now();
    let params = etl::EtlParams::default();
    let raw = etl::read_raw_file_limited(path.as_ref(), params.max_decompressed_bytes)?;
    let read = started.elapsed();
    let (tx, report) = etl::clean(&raw, &params)?;
    drop(raw);
    let cleaned = started.elapsed();
    let parquet = tx.to_parquet()?;
    println!(
        "rows in {}, out {}; read {:.3} s, clean {:.3} s, parquet {:.3} s ({} bytes)",
        report.rows_in,
        report.rows_out,
        read.as_secs_f64(),
        (cleaned - read).as_secs_f64(),
        (started.elapsed() - cleaned).as_secs_f64(),
        parquet.len()
    );
    Ok(())
}
