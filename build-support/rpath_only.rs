//! Build script of crates that need nothing but the libtorch rpath.

include!("torch_rpath.rs");

fn main() {
    emit_torch_rpath();
}
