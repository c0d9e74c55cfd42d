//! Typed access to a GGUF file's metadata, with errors that name the key:
//! the one place the engine reads `general.*`, `{arch}.*` and
//! `tokenizer.*` entries.

use candle_core::quantized::gguf_file::{Content, Value};

use crate::EngineError;

/// Most strings a metadata array (a vocabulary, its merges) may hold: far
/// beyond any real vocabulary (Gemma 3's is 262,144 tokens).
pub(crate) const MAX_STRING_ARRAY_LEN: usize = 1 << 23;

/// Longest string in a metadata array, in bytes: real tokens and merges are
/// under a few hundred bytes.
pub(crate) const MAX_ARRAY_STRING_BYTES: usize = 1 << 16;

/// Typed access to GGUF metadata, with errors that name the key.
pub(crate) struct Metadata<'a>(pub(crate) &'a Content);

impl<'a> Metadata<'a> {
    /// The raw value, if present.
    pub(crate) fn get(&self, name: &str) -> Option<&'a Value> {
        self.0.metadata.get(name)
    }

    /// A string entry that must be present.
    pub(crate) fn required_string(&self, name: &str) -> Result<&'a str, EngineError> {
        self.optional_string(name)?.ok_or_else(|| missing(name))
    }

    /// A string entry, if present.
    pub(crate) fn optional_string(&self, name: &str) -> Result<Option<&'a str>, EngineError> {
        self.get(name)
            .map(|value| match value {
                Value::String(text) => Ok(text.as_str()),
                other => Err(wrong_type(name, "a string", other)),
            })
            .transpose()
    }

    /// A boolean entry, if present.
    pub(crate) fn optional_bool(&self, name: &str) -> Result<Option<bool>, EngineError> {
        self.get(name)
            .map(|value| match value {
                Value::Bool(flag) => Ok(*flag),
                other => Err(wrong_type(name, "a bool", other)),
            })
            .transpose()
    }

    /// A token id entry (any integer type that fits in `u32`), if present.
    pub(crate) fn optional_u32(&self, name: &str) -> Result<Option<u32>, EngineError> {
        self.get(name)
            .map(|value| {
                integer(value)
                    .and_then(|n| u32::try_from(n).ok())
                    .ok_or_else(|| wrong_type(name, "a token id", value))
            })
            .transpose()
    }

    /// An unsigned integer entry (any integer type), if present.
    pub(crate) fn optional_usize(&self, name: &str) -> Result<Option<usize>, EngineError> {
        self.get(name)
            .map(|value| {
                integer(value)
                    .and_then(|n| usize::try_from(n).ok())
                    .ok_or_else(|| wrong_type(name, "a non-negative integer", value))
            })
            .transpose()
    }

    /// An integer entry that must be present and at least 1.
    pub(crate) fn positive_usize(&self, name: &str) -> Result<usize, EngineError> {
        match self.optional_usize(name)? {
            Some(0) => Err(EngineError::Metadata {
                key: name.to_owned(),
                reason: "must be at least 1".to_owned(),
            }),
            Some(n) => Ok(n),
            None => Err(missing(name)),
        }
    }

    /// A float entry (f32, f64 or an integer), if present; it must be finite.
    pub(crate) fn optional_f32(&self, name: &str) -> Result<Option<f32>, EngineError> {
        self.get(name)
            .map(|value| {
                let x = match *value {
                    Value::F32(x) => Some(x),
                    Value::F64(x) => Some(x as f32),
                    _ => integer(value).map(|n| n as f32),
                };
                match x {
                    Some(x) if x.is_finite() => Ok(x),
                    Some(x) => Err(EngineError::Metadata {
                        key: name.to_owned(),
                        reason: format!("{x} is not finite"),
                    }),
                    None => Err(wrong_type(name, "a number", value)),
                }
            })
            .transpose()
    }

    /// An array of strings that must be present.
    ///
    /// At most [`MAX_STRING_ARRAY_LEN`] strings of at most
    /// [`MAX_ARRAY_STRING_BYTES`] each: a crafted vocabulary beyond them
    /// (a token of megabytes made the tokenizer build quadratic) is refused.
    pub(crate) fn string_array(&self, name: &str) -> Result<Vec<String>, EngineError> {
        let value = self.get(name).ok_or_else(|| missing(name))?;
        let Value::Array(items) = value else {
            return Err(wrong_type(name, "an array of strings", value));
        };
        if items.len() > MAX_STRING_ARRAY_LEN {
            return Err(EngineError::Metadata {
                key: name.to_owned(),
                reason: format!(
                    "{} entries; at most {MAX_STRING_ARRAY_LEN} are accepted",
                    items.len()
                ),
            });
        }
        items
            .iter()
            .enumerate()
            .map(|(index, item)| match item {
                Value::String(text) if text.len() > MAX_ARRAY_STRING_BYTES => {
                    Err(EngineError::Metadata {
                        key: name.to_owned(),
                        reason: format!(
                            "element {index} is {} bytes; at most {MAX_ARRAY_STRING_BYTES} are accepted",
                            text.len()
                        ),
                    })
                }
                Value::String(text) => Ok(text.clone()),
                other => Err(wrong_element(name, index, "a string", other)),
            })
            .collect()
    }
}

/// An array of integers with one entry per token.
pub(crate) fn int_array(name: &str, value: &Value, len: usize) -> Result<Vec<i64>, EngineError> {
    let items = per_token_array(name, value, len)?;
    items
        .iter()
        .enumerate()
        .map(|(index, item)| {
            integer(item).ok_or_else(|| wrong_element(name, index, "an integer", item))
        })
        .collect()
}

/// An array of floats with one entry per token.
pub(crate) fn float_array(name: &str, value: &Value, len: usize) -> Result<Vec<f32>, EngineError> {
    let items = per_token_array(name, value, len)?;
    items
        .iter()
        .enumerate()
        .map(|(index, item)| match item {
            Value::F32(x) => Ok(*x),
            // Scores only rank merges; f32 keeps their order.
            Value::F64(x) => Ok(*x as f32),
            other => Err(wrong_element(name, index, "a float", other)),
        })
        .collect()
}

/// An array that must have exactly one entry per token.
pub(crate) fn per_token_array<'v>(
    name: &str,
    value: &'v Value,
    len: usize,
) -> Result<&'v [Value], EngineError> {
    let Value::Array(items) = value else {
        return Err(wrong_type(name, "an array", value));
    };
    if items.len() != len {
        return Err(EngineError::Metadata {
            key: name.to_owned(),
            reason: format!("has {} entries for {len} tokens", items.len()),
        });
    }
    Ok(items)
}

/// Any GGUF integer as `i64`; `None` for other types or `u64` beyond `i64`.
pub(crate) fn integer(value: &Value) -> Option<i64> {
    match *value {
        Value::U8(n) => Some(n.into()),
        Value::I8(n) => Some(n.into()),
        Value::U16(n) => Some(n.into()),
        Value::I16(n) => Some(n.into()),
        Value::U32(n) => Some(n.into()),
        Value::I32(n) => Some(n.into()),
        Value::U64(n) => i64::try_from(n).ok(),
        Value::I64(n) => Some(n),
        _ => None,
    }
}

/// The error for a missing required entry.
pub(crate) fn missing(name: &str) -> EngineError {
    EngineError::Metadata {
        key: name.to_owned(),
        reason: "missing".to_owned(),
    }
}

/// The error for an entry of the wrong type.
pub(crate) fn wrong_type(name: &str, expected: &str, found: &Value) -> EngineError {
    EngineError::Metadata {
        key: name.to_owned(),
        reason: format!("expected {expected}, found {:?}", found.value_type()),
    }
}

/// The error for an array element of the wrong type.
pub(crate) fn wrong_element(
    name: &str,
    index: usize,
    expected: &str,
    found: &Value,
) -> EngineError {
    EngineError::Metadata {
        key: name.to_owned(),
        reason: format!(
            "element {index}: expected {expected}, found {:?}",
            found.value_type()
        ),
    }
}
