//! The minijinja environment shared by validation and rendering, and the
//! mapping of template positions back to file positions.
//!
//! Every interpolated value is written between the markers of
//! [`super::shell`], so rendering can tell values from template text; the
//! `raw` filter opts a value out.

use std::ops::Range;
use std::sync::OnceLock;

use minijinja::value::Value;
use minijinja::{Environment, Error, ErrorKind, State, UndefinedBehavior};

use super::ast::Text;
use super::diag::{Source, Span};
use super::shell::{CLOSE, OPEN};
use super::yaml::Style;

/// Names a template may start with.
pub const ROOTS: &[&str] = &["params", "matrix", "needs", "workflow", "env"];
/// Functions available in `if:` expressions (and templates).
pub const FUNCTIONS: &[&str] = &["always", "success", "failure", "cancelled"];
/// Hidden context entry the status functions read.
pub const STATUS_KEY: &str = "__krt_status";

/// The shared environment: strict about undefined values, marker-wrapping
/// formatter, `raw` filter and the status functions.
pub fn environment() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_formatter(|out, _state, value| {
            if value.is_safe() {
                out.write_str(&value.to_string())?;
                return Ok(());
            }
            let text = value.to_string();
            if text.contains([OPEN, CLOSE]) {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    "the value contains reserved characters U+E000/U+E001",
                ));
            }
            out.write_str(&format!("{OPEN}{text}{CLOSE}"))?;
            Ok(())
        });
        env.add_filter("raw", |v: Value| Value::from_safe_string(v.to_string()));
        env.add_function("always", |_state: &State| true);
        env.add_function("success", |state: &State| status(state, "success"));
        env.add_function("failure", |state: &State| status(state, "failure"));
        env.add_function("cancelled", |state: &State| status(state, "cancelled"));
        env
    })
}

fn status(state: &State, which: &str) -> Result<bool, Error> {
    let s = state.lookup(STATUS_KEY).ok_or_else(|| {
        Error::new(
            ErrorKind::InvalidOperation,
            format!("`{which}()` can only be used in a job's `if:`"),
        )
    })?;
    Ok(s.get_attr(which)?.is_true())
}

/// A template or expression that does not compile.
#[derive(Debug, Clone)]
pub struct TemplateError {
    /// What is wrong.
    pub message: String,
    /// Byte range inside the template text, when known.
    pub range: Option<Range<usize>>,
}

fn template_error(e: &Error) -> TemplateError {
    let kind = match e.kind() {
        ErrorKind::SyntaxError => "syntax error".to_string(),
        ErrorKind::UnknownFilter => "unknown filter".to_string(),
        ErrorKind::UnknownFunction => "unknown function".to_string(),
        ErrorKind::UnknownTest => "unknown test".to_string(),
        other => other.to_string(),
    };
    TemplateError {
        message: match e.detail() {
            Some(d) => format!("{kind}: {d}"),
            None => kind,
        },
        range: e.range(),
    }
}

/// Compiles a template and returns the dotted variable paths it reads
/// (`params.profile`, `needs.build.outputs.version`), sorted.
pub fn check_template(text: &str) -> Result<Vec<String>, TemplateError> {
    // Fast path: most `run:` lines hold no template at all.
    if !text.contains("{{") && !text.contains("{%") && !text.contains("{#") {
        return Ok(Vec::new());
    }
    let t = environment()
        .template_from_str(text)
        .map_err(|e| template_error(&e))?;
    let mut vars: Vec<String> = t.undeclared_variables(true).into_iter().collect();
    vars.sort();
    Ok(vars)
}

/// Compiles an `if:` expression and returns the variable paths it reads.
pub fn check_expression(text: &str) -> Result<Vec<String>, TemplateError> {
    let e = environment()
        .compile_expression(text)
        .map_err(|e| template_error(&e))?;
    let mut vars: Vec<String> = e.undeclared_variables(true).into_iter().collect();
    vars.sort();
    Ok(vars)
}

/// Maps a byte range inside a scalar's text to a span in the file. Exact for
/// single-line scalars and block scalars; other multi-line scalars map to
/// their start.
pub fn span_in_text(source: &Source, text: &Text, range: Range<usize>) -> Span {
    let value = &text.value;
    let start = range.start.min(value.len());
    let end = range.end.clamp(start, value.len());
    let before = &value[..start];
    let len = value[start..end].chars().count().max(1);
    match text.style {
        Style::Plain | Style::Quoted if !before.contains('\n') => {
            let offset = before.chars().count() + usize::from(text.style == Style::Quoted);
            Span::new(
                text.span.start + offset,
                text.span.start + offset + len,
                text.span.line,
                text.span.col + offset,
            )
        }
        Style::Block => {
            // saphyr reports a block scalar's span from its first content
            // character; every content line has the same indentation.
            let k = before.matches('\n').count();
            let col_chars = before.rsplit('\n').next().unwrap_or("").chars().count();
            source
                .span_at(text.span.line + k, text.span.col + col_chars, len)
                .unwrap_or(text.span)
        }
        _ => text.span,
    }
}

/// Span of the first mention of `needle` in a template, or the whole scalar.
pub fn span_of_mention(source: &Source, text: &Text, needle: &str) -> Span {
    match text.value.find(needle) {
        Some(at) => span_in_text(source, text, at..at + needle.len()),
        None => text.span,
    }
}
