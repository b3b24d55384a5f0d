//! `price-mlp-train`: the MLP trainer process. Started by the `models` crate
//! (see `mlp_train`); reads training requests on standard input, answers on
//! standard output, and exits when its input closes.

use std::io::{BufReader, BufWriter};
use std::process::ExitCode;

fn main() -> ExitCode {
    if std::env::args_os().len() > 1 {
        eprintln!(
            "price-mlp-train takes no arguments: it trains the MLP for the requests the models \
             crate writes on its standard input (mlp-wire frames) and exits when that input closes"
        );
        return ExitCode::from(2);
    }
    let mut input = BufReader::with_capacity(1 << 20, std::io::stdin().lock());
    let mut output = BufWriter::new(std::io::stdout().lock());
    match mlp_train::serve(&mut input, &mut output) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let mut msg = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                msg.push_str(": ");
                msg.push_str(&s.to_string());
                source = s.source();
            }
            eprintln!("price-mlp-train: {msg}");
            ExitCode::FAILURE
        }
    }
}
