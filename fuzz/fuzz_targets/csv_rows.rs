//! Fuzz target: see `price_fuzz::csv_rows`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| price_fuzz::csv_rows(data));
