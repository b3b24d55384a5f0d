//! Fuzz target: see `price_fuzz::request_params`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| price_fuzz::request_params(data));
