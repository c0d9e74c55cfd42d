//! `textstream models`: the catalog, one line per model, and whether each is
//! already in the cache.

use textstream_engine::model_file::{self, CATALOG};

/// Bytes per mebibyte, for sizes on disk.
const MIB: f64 = (1u64 << 20) as f64;

/// Prints the catalog as a table.
pub fn run() -> anyhow::Result<()> {
    let cache_dir = model_file::cache_dir()?;
    println!(
        "{:<20} {:<8} {:>9}  {:<7} description",
        "NAME", "ARCH", "SIZE", "CACHED"
    );
    for (index, spec) in CATALOG.iter().enumerate() {
        let cached = model_file::cached(spec, &cache_dir).is_some();
        let default = if index == 0 { ", the default" } else { "" };
        println!(
            "{:<20} {:<8} {:>5.0} MiB  {:<7} {}{default}",
            spec.name,
            spec.architecture,
            spec.size_bytes as f64 / MIB,
            if cached { "yes" } else { "no" },
            spec.title,
        );
    }
    println!("cache: {}", cache_dir.display());
    Ok(())
}
