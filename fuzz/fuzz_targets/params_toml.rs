//! Fuzz target: see `price_fuzz::params_toml`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| price_fuzz::params_toml(data));
