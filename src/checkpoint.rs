//! Checkpoint directories.
//!
//! A model checkpoint is a directory with `model.safetensors` (fp32 tensors under the reference's
//! state_dict names, so PyTorch loads it with `load_state_dict(strict=True)`) and `config.json`
//! (the reference's constructor arguments), and `tokenizer.json` (the tokenizer the model was
//! trained with) when it was saved with one, so the directory is all that inference needs. A
//! training checkpoint adds `optimizer.safetensors`
//! (AdamW's moments) and `trainer_state.json` (step counters and random state) to the same
//! directory. Directories are written next to their destination and renamed into place, so a
//! crash never leaves a half-written checkpoint under the final name.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors, tensor::TensorView};

use crate::data::tokenizer::InstructionTokenizer;
use crate::device::Device;
use crate::error::{Error, Result};
use crate::model::state_dict::{TensorMap, from_state_dict, to_state_dict};
use crate::model::{Config, InstructionTraceTransformerEncoderForMaskedLM};

/// The parameters, under the reference's state_dict names.
pub const MODEL_FILE: &str = "model.safetensors";
/// The reference's constructor arguments.
pub const CONFIG_FILE: &str = "config.json";
/// The tokenizer the model was trained with (the `tokenizers` library's format).
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// Writes a directory atomically: `write` fills a fresh temporary directory beside `dir`, its
/// files are synced, and it then replaces `dir` (see `replace_dir`), so `dir` always holds either
/// the previous complete contents or the new ones.
pub fn write_dir_atomically(dir: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&parent)
        .map_err(|e| Error::io(format!("creating {}", parent.display()), e))?;
    let name = dir
        .file_name()
        .ok_or_else(|| Error::checkpoint(dir, "the checkpoint path has no directory name"))?
        .to_string_lossy()
        .into_owned();
    let unique = format!("{}-{}", std::process::id(), nanos());
    let tmp = parent.join(format!(".{name}.tmp-{unique}"));
    fs::create_dir(&tmp).map_err(|e| Error::io(format!("creating {}", tmp.display()), e))?;
    if let Err(e) = write(&tmp) {
        let _ = fs::remove_dir_all(&tmp);
        return Err(e);
    }
    // Make the files durable before they become visible under the final name.
    for entry in
        fs::read_dir(&tmp).map_err(|e| Error::io(format!("listing {}", tmp.display()), e))?
    {
        let path = entry
            .map_err(|e| Error::io("listing checkpoint", e))?
            .path();
        fs::File::open(&path)
            .and_then(|f| f.sync_all())
            .map_err(|e| Error::io(format!("syncing {}", path.display()), e))?;
    }
    replace_dir(&tmp, dir)?;
    // Make the rename itself durable.
    fs::File::open(&parent)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(format!("syncing {}", parent.display()), e))
}

/// Moves the finished directory `new` to `dir`, replacing what was there. Where the kernel can
/// exchange two directories in one step, there is no moment without a complete `dir`; elsewhere
/// the old one is moved aside first, and a crash between the two renames leaves it complete
/// under a `.NAME.old-*` name.
fn replace_dir(new: &Path, dir: &Path) -> Result<()> {
    if !dir.exists() {
        return fs::rename(new, dir)
            .map_err(|e| Error::io(format!("renaming into {}", dir.display()), e));
    }
    if exchange(new, dir)? {
        // `new` now holds the previous contents.
        return fs::remove_dir_all(new)
            .map_err(|e| Error::io(format!("removing {}", new.display()), e));
    }
    let old = new.with_file_name(
        new.file_name()
            .map(|n| n.to_string_lossy().replace(".tmp-", ".old-"))
            .unwrap_or_default(),
    );
    fs::rename(dir, &old).map_err(|e| Error::io(format!("moving aside {}", dir.display()), e))?;
    fs::rename(new, dir).map_err(|e| Error::io(format!("renaming into {}", dir.display()), e))?;
    fs::remove_dir_all(&old).map_err(|e| Error::io(format!("removing {}", old.display()), e))
}

/// Atomically swaps two paths; false where the system or file system cannot.
#[cfg(target_os = "linux")]
fn exchange(a: &Path, b: &Path) -> Result<bool> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| {
        CString::new(p.as_os_str().as_bytes()).map_err(|_| {
            Error::io(
                format!("path {}", p.display()),
                std::io::ErrorKind::InvalidInput.into(),
            )
        })
    };
    let (a_c, b_c) = (c(a)?, c(b)?);
    // SAFETY: both arguments are valid NUL-terminated paths that outlive the call.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a_c.as_ptr(),
            libc::AT_FDCWD,
            b_c.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if rc == 0 {
        return Ok(true);
    }
    let err = std::io::Error::last_os_error();
    match err.raw_os_error() {
        // Not supported by this kernel or file system: fall back to two renames.
        Some(libc::ENOSYS) | Some(libc::EINVAL) | Some(libc::EOPNOTSUPP) => Ok(false),
        _ => Err(Error::io(
            format!("exchanging {} with {}", a.display(), b.display()),
            err,
        )),
    }
}

#[cfg(not(target_os = "linux"))]
fn exchange(_a: &Path, _b: &Path) -> Result<bool> {
    Ok(false)
}

fn nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// Writes named f32 tensors as a safetensors file.
pub fn write_f32_tensors(
    path: &Path,
    tensors: &[(String, Vec<usize>, &[f32])],
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    let views = tensors
        .iter()
        .map(|(name, shape, data)| {
            TensorView::new(Dtype::F32, shape.clone(), bytemuck::cast_slice(data))
                .map(|v| (name.clone(), v))
                .map_err(|e| Error::checkpoint(path, format!("tensor {name}: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let bytes = safetensors::serialize(views, metadata)
        .map_err(|e| Error::checkpoint(path, e.to_string()))?;
    fs::write(path, bytes).map_err(|e| Error::io(format!("writing {}", path.display()), e))
}

/// Reads every tensor of a safetensors file, which must all be f32.
pub fn read_f32_tensors(path: &Path) -> Result<TensorMap> {
    let bytes = fs::read(path).map_err(|e| Error::checkpoint(path, format!("cannot read: {e}")))?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| Error::checkpoint(path, format!("not a valid safetensors file: {e}")))?;
    let mut out = TensorMap::new();
    for (name, view) in st.tensors() {
        if view.dtype() != Dtype::F32 {
            return Err(Error::checkpoint(
                path,
                format!("tensor {name} has dtype {:?}, expected F32", view.dtype()),
            ));
        }
        let data: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        out.insert(name, (view.shape().to_vec(), data));
    }
    Ok(out)
}

/// Writes `model.safetensors` and `config.json` for a configuration and flat parameters into an
/// existing directory, and `tokenizer.json` when a tokenizer is given.
pub fn write_model_files(
    dir: &Path,
    config: &Config,
    values: &[f32],
    tokenizer: Option<&InstructionTokenizer>,
) -> Result<()> {
    if let Some(tokenizer) = tokenizer {
        tokenizer.save(&dir.join(TOKENIZER_FILE))?;
    }
    let tensors = to_state_dict(config, values)?;
    let named: Vec<(String, Vec<usize>, &[f32])> = tensors
        .iter()
        .map(|t| (t.name.clone(), t.shape.clone(), t.data.as_slice()))
        .collect();
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    write_f32_tensors(&dir.join(MODEL_FILE), &named, Some(metadata))?;
    let json = serde_json::to_string_pretty(config).map_err(|e| Error::Json {
        context: "serialising config".into(),
        source: e,
    })?;
    fs::write(dir.join(CONFIG_FILE), json)
        .map_err(|e| Error::io(format!("writing {}", dir.join(CONFIG_FILE).display()), e))
}

/// Saves a model checkpoint directory atomically, with its tokenizer when one is given (a
/// checkpoint with its tokenizer is all that [`MaskFiller::from_checkpoint`] and `maskedlm infer`
/// need). The tokenizer must match the model ([`check_tokenizer_matches`]).
///
/// [`MaskFiller::from_checkpoint`]: crate::MaskFiller::from_checkpoint
pub fn save_model(
    dir: &Path,
    model: &InstructionTraceTransformerEncoderForMaskedLM,
    tokenizer: Option<&InstructionTokenizer>,
) -> Result<()> {
    if let Some(tokenizer) = tokenizer {
        check_tokenizer_matches(model.config(), tokenizer)?;
    }
    let values = model.backend().download_f32(model.parameters())?;
    write_dir_atomically(dir, |tmp| {
        write_model_files(tmp, model.config(), &values, tokenizer)
    })
}

/// The tokenizer saved in a checkpoint directory, or `None` when it holds no `tokenizer.json`.
pub fn load_tokenizer(dir: &Path) -> Result<Option<InstructionTokenizer>> {
    let path = dir.join(TOKENIZER_FILE);
    if !path.exists() {
        return Ok(None);
    }
    InstructionTokenizer::load(&path).map(Some)
}

/// The tokenizer to use with a checkpoint: the file given, else the checkpoint's own
/// `tokenizer.json`; an error naming both places when neither exists.
pub fn resolve_tokenizer(
    checkpoint: &Path,
    tokenizer: Option<&Path>,
) -> Result<InstructionTokenizer> {
    match tokenizer {
        Some(path) => InstructionTokenizer::load(path),
        None => load_tokenizer(checkpoint)?.ok_or_else(|| {
            Error::checkpoint(
                checkpoint,
                format!(
                    "no tokenizer: none was given (--tokenizer) and the checkpoint has no {TOKENIZER_FILE} (at {})",
                    checkpoint.join(TOKENIZER_FILE).display()
                ),
            )
        }),
    }
}

/// A model and a tokenizer must agree on the ids the model was built with, and the tokenizer may
/// not cut inputs at more positions than the model takes. The error says how they differ.
pub fn check_tokenizer_matches(config: &Config, tokenizer: &InstructionTokenizer) -> Result<()> {
    let model = (
        config.vocab_size,
        config.mask_token_id,
        config.next_token_id,
    );
    let ids = (
        tokenizer.vocab_size(),
        tokenizer.mask_token_id(),
        tokenizer.next_token_id(),
    );
    if model != ids {
        return Err(Error::Config(format!(
            "the model (vocab_size {}, [MASK] {}, [NEXT] {}) was not built for this tokenizer (vocab_size {}, [MASK] {}, [NEXT] {})",
            model.0, model.1, model.2, ids.0, ids.1, ids.2
        )));
    }
    if tokenizer.sequence_length() > config.sequence_length {
        let n = config.sequence_length;
        return Err(Error::Config(format!(
            "the tokenizer's sequence length is {} but the model's is {n}: inputs would be cut at {} tokens but the model takes only {n} positions (train a tokenizer with `train-tokenizer --sequence-length {n}`)",
            tokenizer.sequence_length(),
            tokenizer.sequence_length(),
        )));
    }
    Ok(())
}

/// Reads a checkpoint's `config.json`.
pub fn load_config(dir: &Path) -> Result<Config> {
    let path = dir.join(CONFIG_FILE);
    let text = fs::read_to_string(&path)
        .map_err(|e| Error::checkpoint(&path, format!("cannot read: {e}")))?;
    let config: Config = serde_json::from_str(&text)
        .map_err(|e| Error::checkpoint(&path, format!("invalid config: {e}")))?;
    config
        .validate()
        .map_err(|e| Error::checkpoint(&path, e.to_string()))?;
    Ok(config)
}

/// Loads a model checkpoint directory onto `device`, checking every tensor's name, shape and
/// dtype against the configuration.
pub fn load_model(
    dir: &Path,
    device: Device,
) -> Result<InstructionTraceTransformerEncoderForMaskedLM> {
    let config = load_config(dir)?;
    let path = dir.join(MODEL_FILE);
    let tensors = read_f32_tensors(&path)?;
    let values = from_state_dict(&config, &tensors).map_err(|e| match e {
        Error::Config(reason) => Error::checkpoint(&path, reason),
        other => other,
    })?;
    InstructionTraceTransformerEncoderForMaskedLM::from_parameters(config, device, &values)
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn directories_are_exchanged_in_one_step() {
        let root = tempfile::tempdir().unwrap();
        let (a, b) = (root.path().join("a"), root.path().join("b"));
        fs::create_dir(&a).unwrap();
        fs::create_dir(&b).unwrap();
        fs::write(a.join("x"), "new").unwrap();
        fs::write(b.join("x"), "old").unwrap();
        if !exchange(&a, &b).unwrap() {
            eprintln!(
                "skipped: this file system cannot exchange directories (two renames are used)"
            );
            return;
        }
        assert_eq!(fs::read_to_string(b.join("x")).unwrap(), "new");
        assert_eq!(fs::read_to_string(a.join("x")).unwrap(), "old");
    }
}
