//! The fuzz targets' bodies, shared by the cargo-fuzz binaries
//! (`fuzz_targets/`, nightly) and by the corpus replay test of the main
//! workspace (`tests/tests/fuzz_corpus.rs`, stable), so every input the
//! fuzzer kept is re-checked by `cargo test`.
//!
//! Each function panics when a property fails: that is a finding.

use recommend::PriceRequest;

/// The raw export reader and the etl stage's cleaning on arbitrary bytes
/// (plain or gzip): an error or a table, never a panic; what is kept is
/// consistent with what was read.
pub fn csv_rows(data: &[u8]) {
    let Ok(raw) = etl::read_raw_bytes(data, "fuzz.csv") else {
        return;
    };
    let Ok((tx, report)) = etl::clean(&raw, &etl::EtlParams::default()) else {
        return;
    };
    assert_eq!(report.rows_in, raw.height() as u64);
    assert!(report.rows_out <= report.rows_in);
    assert_eq!(tx.len() as u64, report.rows_out);
    let dropped: u64 = report.dropped.values().sum();
    assert_eq!(dropped + report.rows_out, report.rows_in);
}

fn check(req: &PriceRequest) {
    assert!(req.validate().is_ok(), "{req:?}");
    for v in [
        req.unitprice_min,
        req.unitprice_max,
        req.unit_cost,
        req.max_change,
        req.min_margin,
    ]
    .into_iter()
    .flatten()
    {
        assert!(v.is_finite(), "{req:?}");
    }
    assert!((recommend::MIN_PRICE_BINS..=recommend::MAX_PRICE_BINS).contains(&req.num_price_bins));
    assert!(req.cache_key().starts_with(&req.stockcode));
}

/// The pricing routes' parameters as the server receives them: a stock code
/// and a URL query (`CODE?name=value&...`, decoded as the server decodes
/// it), and the same as a JSON body. A request that parses is valid, its
/// numbers are finite, and it parses the same way twice.
pub fn request_params(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (code, query) = text.split_once('?').unwrap_or((text, ""));
    let pairs: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    let parsed =
        PriceRequest::from_pairs(code, pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    if let Ok(req) = &parsed {
        check(req);
        let again =
            PriceRequest::from_pairs(code, pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        assert_eq!(again.ok().map(|r| r.cache_key()), Some(req.cache_key()));
    }
    if let Ok(body) = serde_json::from_slice::<serde_json::Value>(data)
        && let Ok(req) = PriceRequest::from_json(&body)
    {
        check(&req);
    }
}

/// `params.toml` text and `--set` lines: parsed, checked against the
/// defaults, layered and typed as `cargo xtask pipeline` does. An error or
/// params every stage can read, never a panic.
pub fn params_toml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Before a NUL: the file; after it, one `--set` per line.
    let (file, sets) = text.split_once('\0').unwrap_or((text, ""));
    let sets: Vec<String> = sets.lines().map(str::to_string).collect();
    let Ok(parsed) = lineage::Params::from_toml_str(file) else {
        let _ = pipeline::params::effective(None, &sets);
        return;
    };
    if let Ok((params, sources)) = pipeline::params::effective(Some(("fuzz.toml", &parsed)), &sets)
    {
        let typed = pipeline::PipelineParams::from_params(&params)
            .unwrap_or_else(|e| panic!("effective params that do not type: {e}"));
        assert!(typed.validate().is_ok());
        let _ = typed.train_config();
        let _ = typed.gate_params();
        let _ = typed.feature_params();
        for key in params.leaves().keys() {
            assert!(
                sources.contains_key(key) || key.starts_with("gate.stattest."),
                "{key} has no source"
            );
        }
    }
}
