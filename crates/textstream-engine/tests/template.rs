//! Checks that chat templates render as transformers renders them.
//!
//! The SmolLM2 test reads the real template from the default model (fetched
//! on first use); the others need no model.

use std::fs::File;
use std::io::BufReader;
use std::path::PathBuf;

use candle_core::quantized::gguf_file::Content;
use textstream_engine::template::{ChatTemplate, Message};
use textstream_engine::tokenizer::GgufTokenizer;
use textstream_engine::EngineError;

/// Environment variable naming the GGUF model file.
const MODEL_ENV: &str = "TEXTSTREAM_MODEL";

/// A plain ChatML template, as many models ship it.
const CHATML: &str = "{% for message in messages %}\
{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}\
{% endfor %}\
{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// The model file from `TEXTSTREAM_MODEL`, if set.
fn model_path() -> Option<PathBuf> {
    Some(textstream_engine::testing::default_model_path())
}

fn conversation() -> Vec<Message> {
    vec![
        Message::new("system", "You are terse."),
        Message::new("user", "What is 2+2?"),
    ]
}

#[test]
fn smollm2_template_from_the_model() {
    let Some(path) = model_path() else {
        eprintln!(
            "skipping smollm2_template_from_the_model: set {MODEL_ENV} to the SmolLM2 GGUF file"
        );
        return;
    };
    let file = File::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let content = Content::read(&mut BufReader::new(file))
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let tokenizer = GgufTokenizer::from_gguf(&content).expect("tokenizer");
    let source = tokenizer
        .chat_template
        .as_deref()
        .expect("SmolLM2 ships a chat template");
    let text = |id: Option<u32>| {
        id.and_then(|id| tokenizer.token_text(id))
            .unwrap_or_default()
    };
    let template = ChatTemplate::new(source, &text(tokenizer.bos_id), &text(tokenizer.eos_id))
        .expect("the template parses");

    let prompt = template.render(&conversation(), true).expect("renders");
    assert_eq!(
        prompt,
        "<|im_start|>system\nYou are terse.<|im_end|>\n\
         <|im_start|>user\nWhat is 2+2?<|im_end|>\n\
         <|im_start|>assistant\n"
    );

    // Without a system message the template supplies SmolLM2's own.
    let prompt = template
        .render(&[Message::new("user", "Hi")], false)
        .expect("renders");
    assert_eq!(
        prompt,
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
         <|im_start|>user\nHi<|im_end|>\n"
    );
}

#[test]
fn chatml_inline_template() {
    let template = ChatTemplate::new(CHATML, "", "<|im_end|>").expect("parses");
    assert_eq!(
        template.render(&conversation(), true).expect("renders"),
        "<|im_start|>system\nYou are terse.<|im_end|>\n\
         <|im_start|>user\nWhat is 2+2?<|im_end|>\n\
         <|im_start|>assistant\n"
    );
    assert_eq!(
        template.render(&conversation(), false).expect("renders"),
        "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
    );
}

#[test]
fn raise_exception_becomes_the_error_message() {
    let source = "{% for message in messages %}\
        {% if message.role not in ['user', 'assistant'] %}\
        {{ raise_exception('Only user and assistant roles are supported!') }}\
        {% endif %}{{ message.content }}{% endfor %}";
    let template = ChatTemplate::new(source, "", "").expect("parses");
    assert_eq!(
        template
            .render(&[Message::new("user", "ok")], false)
            .expect("renders"),
        "ok"
    );
    let err = template
        .render(&conversation(), false)
        .expect_err("system is rejected");
    match err {
        EngineError::Template { message } => {
            assert_eq!(message, "Only user and assistant roles are supported!");
        }
        other => panic!("expected EngineError::Template, got {other:?}"),
    }
}

#[test]
fn syntax_error_is_reported_when_parsing() {
    let err = ChatTemplate::new(
        "line one\n{% for message in messages %}{{ message.content }}",
        "",
        "",
    )
    .expect_err("the for loop is never closed");
    match &err {
        EngineError::TemplateSyntax { message } => {
            assert!(message.contains("syntax error"), "{message}");
            assert!(
                message.contains("chat_template:"),
                "names the template and line: {message}"
            );
        }
        other => panic!("expected EngineError::TemplateSyntax, got {other:?}"),
    }
    assert!(
        err.to_string().starts_with("chat template does not parse"),
        "{err}"
    );
}

#[test]
fn undefined_method_is_a_render_error() {
    let template =
        ChatTemplate::new("{{ messages[0].content.no_such_method() }}", "", "").expect("parses");
    let err = template
        .render(&conversation(), false)
        .expect_err("no such method");
    assert!(matches!(err, EngineError::Template { .. }), "{err:?}");
}

#[test]
fn whitespace_control_matches_transformers() {
    // trim_blocks drops the newline after a block tag and lstrip_blocks the
    // indentation before one; the final newline of the template is dropped.
    let source = "{% for message in messages %}\n    {% if message.role == 'user' %}\n[{{ message.content }}]\n    {% endif %}\n{% endfor %}\n";
    let template = ChatTemplate::new(source, "", "").expect("parses");
    assert_eq!(
        template.render(&conversation(), false).expect("renders"),
        "[What is 2+2?]\n"
    );
}

#[test]
fn python_methods_and_special_tokens() {
    let source = "{{ bos_token }}\
        {% for message in messages %}\
        {% if message['content'].startswith('  ') %}{{ message['content'].strip().upper() }}{% endif %}\
        {% for key, value in message.items() %}{{ key }}={{ value | length }};{% endfor %}\
        {% endfor %}\
        {% if tools is none %}no tools{% endif %}{{ eos_token }}";
    let template = ChatTemplate::new(source, "<s>", "</s>").expect("parses");
    let rendered = template
        .render(&[Message::new("user", "  hi  ")], false)
        .expect("renders");
    // Keys come in the struct's order, as Python's dicts keep them.
    assert_eq!(rendered, "<s>HIrole=4;content=6;no tools</s>");
}

#[test]
fn loop_controls_and_namespace() {
    let source = "{% set ns = namespace(last_user='') %}\
        {% for message in messages %}\
        {% if message.role == 'user' %}{% set ns.last_user = message.content %}{% break %}{% endif %}\
        {% endfor %}{{ ns.last_user }}";
    let template = ChatTemplate::new(source, "", "").expect("parses");
    assert_eq!(
        template.render(&conversation(), false).expect("renders"),
        "What is 2+2?"
    );
}
