/// A per-process scratch file for targets whose readers take a path.
pub fn scratch(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("imixer-fuzz-{name}-{}", std::process::id()))
}
