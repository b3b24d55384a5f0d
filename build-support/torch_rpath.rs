// The build script of the one crate that links libtorch (crates/mlp-train,
// the MLP trainer process): records libtorch's library directory as an
// rpath, so the trainer runs with no LD_LIBRARY_PATH.
// `LIBTORCH` comes from .cargo/config.toml ([env], set up by scripts/setup.sh).

fn emit_torch_rpath() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    if let Ok(dir) = std::env::var("LIBTORCH") {
        let lib = std::path::Path::new(&dir).join("lib");
        // Resolve the .tools/libtorch symlink: binaries then keep working
        // wherever the checkout goes.
        if let Ok(lib) = lib.canonicalize() {
            println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
        }
    }
}
