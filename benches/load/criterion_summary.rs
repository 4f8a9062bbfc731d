//! Prints every criterion bench's median time per iteration with its min and max over the
//! samples, from `target/criterion/**/new/sample.json`: the figures docs/performance.md
//! reports. Run after `cargo bench -p shortlinks-benches` (`benches/run` does both).

use std::path::{Path, PathBuf};

use anyhow::Context;

fn samples(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            samples(&path, out)?;
        } else if path.ends_with("new/sample.json") {
            out.push(path);
        }
    }
    Ok(())
}

fn human(ns: f64) -> String {
    match ns {
        ns if ns >= 1e6 => format!("{:.2} ms", ns / 1e6),
        ns if ns >= 1e3 => format!("{:.2} µs", ns / 1e3),
        ns => format!("{ns:.0} ns"),
    }
}

fn main() -> anyhow::Result<()> {
    let root = std::env::args().nth(1).unwrap_or_else(|| "target/criterion".into());
    let mut files = Vec::new();
    samples(Path::new(&root), &mut files).with_context(|| format!("reading {root}"))?;
    files.sort();
    println!("{:<36} {:>12} {:>12} {:>12}", "bench", "median", "min", "max");
    for file in files {
        let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&file)?)?;
        let iters = json["iters"].as_array().context("iters")?;
        let times = json["times"].as_array().context("times")?;
        let mut per_iter: Vec<f64> =
            iters.iter().zip(times).filter_map(|(n, t)| Some(t.as_f64()? / n.as_f64()?)).collect();
        per_iter.sort_by(f64::total_cmp);
        let Some((&min, &max)) = per_iter.first().zip(per_iter.last()) else { continue };
        let median = per_iter[per_iter.len() / 2];
        let name = file.strip_prefix(&root)?.parent().and_then(Path::parent).context("bench dir")?;
        println!("{:<36} {:>12} {:>12} {:>12}", name.display(), human(median), human(min), human(max));
    }
    Ok(())
}
