//! Renders chat messages into a prompt with the model's Jinja chat template,
//! the way transformers' `apply_chat_template` does.
//!
//! Chat templates are written for Python's Jinja2, so [`ChatTemplate`] sets
//! up minijinja to behave like transformers' environment: `trim_blocks` and
//! `lstrip_blocks` on, no trailing newline kept, Python's string, dict and
//! list methods (`.strip()`, `.startswith()`, `.items()`, ...) through
//! minijinja-contrib's pycompat, and the helpers transformers adds:
//! `raise_exception(message)`, `strftime_now(format)` and a `tojson` that
//! writes JSON as Python's `json.dumps` does. The template sees `messages`,
//! `add_generation_prompt`, `bos_token`, `eos_token`, and `tools` and
//! `documents` set to `none`.
//!
//! ```
//! use textstream_engine::template::{ChatTemplate, Message};
//!
//! let chatml = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}\
//!               {% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";
//! let template = ChatTemplate::new(chatml, "", "<|im_end|>")?;
//! let prompt = template.render(&[Message::new("user", "Hi")], true)?;
//! assert_eq!(prompt, "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
//! # Ok::<(), textstream_engine::EngineError>(())
//! ```

use std::fmt;
use std::time::SystemTime;

use chrono::{DateTime, Utc};

use minijinja::value::{Kwargs, Value};
use minijinja::{context, Environment, Error, ErrorKind};
use serde::{Deserialize, Serialize};

use crate::EngineError;

/// The name the template is stored under in its environment; it appears in
/// error messages as `(in chat_template:LINE)`.
const TEMPLATE_NAME: &str = "chat_template";

/// Gemma 3's chat template as its tokenizer_config.json ships it (for
/// messages whose content is text): BOS, then `<start_of_turn>ROLE\n ...
/// <end_of_turn>\n` turns with `assistant` named `model`, a system message
/// folded into the first user turn, and roles that must alternate. Gemma
/// GGUF files often lack `tokenizer.chat_template`.
const GEMMA_TEMPLATE: &str = "{{ bos_token }}\
{%- if messages[0]['role'] == 'system' -%}\
{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}\
{%- set loop_messages = messages[1:] -%}\
{%- else -%}\
{%- set first_user_prefix = '' -%}\
{%- set loop_messages = messages -%}\
{%- endif -%}\
{%- for message in loop_messages -%}\
{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}\
{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}\
{%- endif -%}\
{%- if message['role'] == 'assistant' -%}{%- set role = 'model' -%}\
{%- else -%}{%- set role = message['role'] -%}{%- endif -%}\
{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}\
{{- message['content'] | trim }}{{ '<end_of_turn>\n' }}\
{%- endfor -%}\
{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}";

/// The chat template a family's authors ship, for files of architecture
/// `architecture` that carry none in their metadata.
pub fn builtin(architecture: &str) -> Option<&'static str> {
    match architecture {
        "gemma" | "gemma2" | "gemma3" => Some(GEMMA_TEMPLATE),
        _ => None,
    }
}

/// One chat message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// Who speaks: usually `"system"`, `"user"` or `"assistant"`.
    pub role: String,
    /// What they say.
    pub content: String,
}

impl Message {
    /// A message from `role` saying `content`.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// A parsed chat template, ready to render conversations.
#[derive(Clone, Debug)]
pub struct ChatTemplate {
    /// The environment holding the parsed template and its helpers.
    env: Environment<'static>,
    /// The model's BOS text, passed to the template as `bos_token`.
    bos_token: String,
    /// The model's EOS text, passed to the template as `eos_token`.
    eos_token: String,
}

impl ChatTemplate {
    /// Parses `source`; `bos_token` and `eos_token` are the texts the
    /// template may write (e.g. from
    /// [`GgufTokenizer::token_text`](crate::tokenizer::GgufTokenizer::token_text)).
    ///
    /// # Errors
    ///
    /// [`EngineError::TemplateSyntax`] when the template does not parse.
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self, EngineError> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_keep_trailing_newline(false);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_template_owned(TEMPLATE_NAME, source.to_owned())
            .map_err(|err| EngineError::TemplateSyntax {
                message: err.to_string(),
            })?;
        Ok(Self {
            env,
            bos_token: bos_token.to_owned(),
            eos_token: eos_token.to_owned(),
        })
    }

    /// Renders `messages` into a prompt; with `add_generation_prompt` the
    /// template ends with the opening of the assistant's turn.
    ///
    /// # Errors
    ///
    /// [`EngineError::Template`] when rendering fails; when the template
    /// called `raise_exception(message)`, the error's message is exactly
    /// `message`.
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String, EngineError> {
        let template = self.env.get_template(TEMPLATE_NAME).map_err(render_error)?;
        template
            .render(context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                bos_token => &self.bos_token,
                eos_token => &self.eos_token,
                // transformers passes these as None when not given.
                tools => Value::from(()),
                documents => Value::from(()),
            })
            .map_err(render_error)
    }
}

/// The message a template passed to `raise_exception`, carried as the source
/// of minijinja's error so that [`render_error`] can find it.
#[derive(Debug)]
struct RaisedException(String);

impl fmt::Display for RaisedException {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RaisedException {}

/// transformers' `raise_exception(message)`: fails the render with `message`.
fn raise_exception(message: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message.clone())
        .with_source(RaisedException(message)))
}

/// Turns a render failure into [`EngineError::Template`], with the exact
/// message when the template raised one itself.
fn render_error(err: Error) -> EngineError {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&err);
    while let Some(current) = cause {
        if let Some(RaisedException(message)) = current.downcast_ref::<RaisedException>() {
            return EngineError::Template {
                message: message.clone(),
            };
        }
        cause = current.source();
    }
    EngineError::Template {
        message: err.to_string(),
    }
}

/// transformers' `tojson`: Python's `json.dumps(value, ensure_ascii=False)`,
/// with `", "` and `": "` between items, or pretty-printed with `indent`
/// spaces. Unlike minijinja's own filter it leaves `<`, `>`, `&` and `'`
/// alone, and keys stay in the order the template built them.
fn tojson(value: Value, kwargs: Kwargs) -> Result<Value, Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    kwargs.assert_all_used()?;
    let mut out = Vec::new();
    let written = match indent {
        Some(width) => {
            let spaces = " ".repeat(width);
            let formatter = serde_json::ser::PrettyFormatter::with_indent(spaces.as_bytes());
            value.serialize(&mut serde_json::Serializer::with_formatter(
                &mut out, formatter,
            ))
        }
        None => value.serialize(&mut serde_json::Serializer::with_formatter(
            &mut out,
            PythonSeparators,
        )),
    };
    written.map_err(|err| {
        Error::new(ErrorKind::InvalidOperation, "tojson: cannot serialize").with_source(err)
    })?;
    let json = String::from_utf8(out).map_err(|err| {
        Error::new(ErrorKind::InvalidOperation, "tojson: invalid UTF-8").with_source(err)
    })?;
    let json = if ensure_ascii.unwrap_or(false) {
        escape_non_ascii(&json)
    } else {
        json
    };
    Ok(Value::from_safe_string(json))
}

/// Python `json.dumps`'s default separators: `", "` and `": "`.
struct PythonSeparators;

impl serde_json::ser::Formatter for PythonSeparators {
    fn begin_array_value<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            writer.write_all(b", ")
        }
    }

    fn begin_object_key<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            writer.write_all(b", ")
        }
    }

    fn begin_object_value<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
    ) -> std::io::Result<()> {
        writer.write_all(b": ")
    }
}

/// Writes every non-ASCII character of JSON text as `\uXXXX` (UTF-16, as
/// Python's `ensure_ascii=True`). Such characters only occur inside strings.
fn escape_non_ascii(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    let mut units = [0u16; 2];
    for c in json.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            for unit in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    out
}

/// transformers' `strftime_now(format)`: the current time formatted like
/// Python's `strftime` (chrono's specifiers are the C library's). The time
/// is UTC (no time-zone database here).
fn strftime_now(format: String) -> Result<Value, Error> {
    format_utc(DateTime::<Utc>::from(SystemTime::now()), &format).map(Value::from)
}

/// `time` formatted by `format`; an unknown specifier is a render error.
fn format_utc(time: DateTime<Utc>, format: &str) -> Result<String, Error> {
    use std::fmt::Write;
    let mut out = String::new();
    write!(out, "{}", time.format(format)).map_err(|_| {
        Error::new(
            ErrorKind::InvalidOperation,
            format!("strftime_now: {format:?} is not a strftime format"),
        )
    })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2024-02-29T13:05:09Z, a Thursday in a leap year.
    const LEAP_DAY_AFTERNOON: i64 = 1_709_211_909;

    #[test]
    fn formats_dates_like_python() {
        let at = |seconds| format_time(seconds, "%F %T %a %j");
        assert_eq!(
            format_time(LEAP_DAY_AFTERNOON, "%d %b %Y"),
            Some("29 Feb 2024".into())
        );
        assert_eq!(
            format_time(LEAP_DAY_AFTERNOON, "%A %B %e, %y %H:%M:%S %I%p %j %%"),
            Some("Thursday February 29, 24 13:05:09 01PM 060 %".into())
        );
        assert_eq!(format_time(-1, "%F %T"), Some("1969-12-31 23:59:59".into()));
        // Leap and century years; expected strings from Python's strftime.
        for (seconds, expected) in [
            (951_868_799, "2000-02-29 23:59:59 Tue 060"),
            (951_868_800, "2000-03-01 00:00:00 Wed 061"),
            (4_107_585_600, "2100-03-01 12:00:00 Mon 060"),
            (-2_208_988_800, "1900-01-01 00:00:00 Mon 001"),
            (1_704_063_600, "2023-12-31 23:00:00 Sun 365"),
        ] {
            assert_eq!(at(seconds), Some(expected.into()));
        }
        // Not a specifier: an error, never a panic.
        assert_eq!(format_time(0, "%Q"), None);
    }

    fn format_time(seconds: i64, format: &str) -> Option<String> {
        let time = DateTime::from_timestamp(seconds, 0).expect("in range");
        format_utc(time, format).ok()
    }

    #[test]
    fn tojson_writes_like_python_json_dumps() {
        let template = ChatTemplate::new(
            "{{ {'a': [1, 'x<y'], 'b': none} | tojson }}|{{ [1] | tojson(indent=2) }}|{{ 'é' | tojson(ensure_ascii=true) }}",
            "",
            "",
        )
        .expect("parses");
        assert_eq!(
            template.render(&[], false).expect("renders"),
            "{\"a\": [1, \"x<y\"], \"b\": null}|[\n  1\n]|\"\\u00e9\""
        );
    }

    #[test]
    fn gemma_template_renders_turns_like_transformers() {
        let template =
            ChatTemplate::new(builtin("gemma3").expect("gemma"), "<bos>", "<eos>").expect("parses");
        let messages = [
            Message::new("system", "Be brief."),
            Message::new("user", " Hi "),
            Message::new("assistant", "Hello!"),
            Message::new("user", "Why is the sky blue?"),
        ];
        // The string transformers' apply_chat_template gives for these messages.
        assert_eq!(
            template.render(&messages, true).expect("renders"),
            "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n\
             <start_of_turn>model\nHello!<end_of_turn>\n\
             <start_of_turn>user\nWhy is the sky blue?<end_of_turn>\n\
             <start_of_turn>model\n"
        );
        let unordered = [Message::new("assistant", "Hi"), Message::new("user", "?")];
        let err = template
            .render(&unordered, true)
            .expect_err("roles alternate");
        assert!(err.to_string().contains("alternate"), "{err}");
        assert_eq!(builtin("llama"), None);
    }

    #[test]
    fn strftime_now_renders_a_year() {
        let template = ChatTemplate::new("{{ strftime_now('%Y') }}", "", "").expect("parses");
        let year = template.render(&[], false).expect("renders");
        assert!(year.parse::<u32>().is_ok_and(|y| y >= 2024), "{year}");
    }
}
