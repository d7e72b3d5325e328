//! Writes the CRDs generated from the Rust types into `crds/` (or the directory given
//! as the first argument).

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .or_else(|| {
            // `cargo run` sets the package directory at run time; a compiled-in one may be
            // another clone's when the cargo target directory is shared.
            std::env::var_os("CARGO_MANIFEST_DIR").map(|dir| PathBuf::from(dir).join("../crds"))
        })
        .ok_or("give the output directory: crdgen <dir> (or run it with `cargo run`)")?;
    std::fs::create_dir_all(&dir)?;
    for (file, yaml) in outbox_operator::crd::crd_yaml()? {
        let path = dir.join(file);
        std::fs::write(&path, yaml)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
