//! Diagnostics about a workflow file: what is wrong, where (file, line,
//! column, a label on the span) and a hint where one helps.
//!
//! Positions are kept in characters (what the YAML parser reports) and turned
//! into byte offsets only when a diagnostic is rendered.

use std::fmt;
use std::sync::Arc;

use annotate_snippets::{AnnotationKind, Group, Level, Renderer, Snippet};

/// A region of the source, in characters; `line` and `col` are 1-based.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Span {
    /// Character offset of the first character.
    pub start: usize,
    /// Character offset one past the last character.
    pub end: usize,
    /// Line of `start`, from 1.
    pub line: usize,
    /// Column of `start`, from 1.
    pub col: usize,
}

impl Span {
    /// A span covering `start..end` with the position of `start`.
    pub fn new(start: usize, end: usize, line: usize, col: usize) -> Self {
        Self {
            start,
            end: end.max(start),
            line,
            col,
        }
    }
}

/// How bad a diagnostic is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// The workflow cannot run.
    Error,
    /// The workflow runs, but probably not as meant.
    Warning,
}

/// One problem found in a workflow file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// Lowercase fragment naming the problem and the job or step it is in.
    pub message: String,
    /// Where; `None` for problems of the file as a whole.
    pub span: Option<Span>,
    /// Short text under the span.
    /// (Boxed: it keeps a diagnostic small enough to return by value.)
    pub label: Option<Box<str>>,
    /// A suggestion, printed as `help: ...`.
    pub hint: Option<String>,
    /// The file the span is in, when it is not the workflow file itself
    /// (a catalog entry a `uses:` step expanded).
    pub file: Option<Arc<Source>>,
}

impl Diagnostic {
    /// An error at `span`.
    pub fn error(message: impl Into<String>, span: Option<Span>) -> Self {
        Self {
            severity: Severity::Error,
            message: message.into(),
            span,
            label: None,
            hint: None,
            file: None,
        }
    }

    /// A warning at `span`.
    pub fn warning(message: impl Into<String>, span: Option<Span>) -> Self {
        Self {
            severity: Severity::Warning,
            ..Self::error(message, span)
        }
    }

    /// Adds a label under the span.
    pub fn with_label(mut self, label: impl Into<String>) -> Self {
        self.label = Some(label.into().into_boxed_str());
        self
    }

    /// Adds a hint.
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// Adds a hint when there is one.
    pub fn with_opt_hint(mut self, hint: Option<String>) -> Self {
        self.hint = hint;
        self
    }

    /// Places the span in another file than the workflow's (`None` keeps it
    /// in the workflow file).
    pub fn in_file(mut self, file: Option<Arc<Source>>) -> Self {
        if file.is_some() {
            self.file = file;
        }
        self
    }
}

/// The text of a workflow file (or of a catalog entry), with the name it is
/// reported under.
#[derive(Clone, Debug)]
pub struct Source {
    /// Path or name shown in diagnostics (`ci.yaml`, `workflow/ns/name`).
    pub name: String,
    /// The whole text.
    pub text: Arc<str>,
    /// Character offset where each line starts.
    line_starts: Vec<usize>,
    ascii: bool,
}

impl Source {
    /// Wraps a file's text.
    pub fn new(name: impl Into<String>, text: impl Into<Arc<str>>) -> Self {
        let text: Arc<str> = text.into();
        let mut line_starts = vec![0];
        for (i, c) in text.chars().enumerate() {
            if c == '\n' {
                line_starts.push(i + 1);
            }
        }
        let ascii = text.is_ascii();
        Self {
            name: name.into(),
            text,
            line_starts,
            ascii,
        }
    }

    /// Character offset of the start of `line` (1-based), if it exists.
    pub fn line_start(&self, line: usize) -> Option<usize> {
        self.line_starts.get(line.checked_sub(1)?).copied()
    }

    /// A span of `len` characters starting at (`line`, `col`) (1-based).
    pub fn span_at(&self, line: usize, col: usize, len: usize) -> Option<Span> {
        let start = self.line_start(line)? + col.checked_sub(1)?;
        Some(Span::new(start, start + len, line, col))
    }

    /// The characters `from..` of the text, as a string slice.
    pub fn slice_from(&self, from: usize) -> &str {
        &self.text[self.byte(from)..]
    }

    /// Byte offset of a character offset.
    pub fn byte(&self, char_offset: usize) -> usize {
        if self.ascii {
            return char_offset.min(self.text.len());
        }
        self.text
            .char_indices()
            .nth(char_offset)
            .map_or(self.text.len(), |(b, _)| b)
    }
}

/// Two sources are the same file when name and text are.
impl PartialEq for Source {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && self.text == other.text
    }
}

impl Eq for Source {}

/// All diagnostics of one file, sorted by position.
#[derive(Clone, Debug)]
pub struct Diagnostics {
    /// The file they are about.
    pub source: Source,
    /// Errors and warnings in source order.
    pub items: Vec<Diagnostic>,
}

impl Diagnostics {
    /// Sorts `items` into a stable order: the workflow file's first, then
    /// those in other files (catalog entries) by file name; by position,
    /// then by message.
    pub fn new(source: Source, mut items: Vec<Diagnostic>) -> Self {
        items.sort_by(|a, b| {
            let key = |d: &Diagnostic| {
                (
                    d.file.as_ref().map(|f| f.name.clone()),
                    d.span.map_or((0, 0), |s| (s.start, s.end)),
                    d.severity,
                )
            };
            key(a).cmp(&key(b)).then_with(|| a.message.cmp(&b.message))
        });
        items.dedup();
        Self { source, items }
    }

    /// Number of errors (warnings do not count).
    pub fn error_count(&self) -> usize {
        self.items
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .count()
    }

    /// Number of warnings.
    pub fn warning_count(&self) -> usize {
        self.items.len() - self.error_count()
    }

    /// Renders every diagnostic, rustc-style, with or without color.
    pub fn render(&self, color: bool) -> String {
        let renderer = if color {
            Renderer::styled()
        } else {
            Renderer::plain()
        };
        let mut out = String::new();
        for d in &self.items {
            out.push_str(&self.render_one(&renderer, d));
            out.push_str("\n\n");
        }
        out
    }

    fn render_one(&self, renderer: &Renderer, d: &Diagnostic) -> String {
        let level = match d.severity {
            Severity::Error => Level::ERROR,
            Severity::Warning => Level::WARNING,
        };
        let title = level.primary_title(d.message.as_str());
        let mut groups = Vec::new();
        let source = d.file.as_deref().unwrap_or(&self.source);
        match d.span {
            Some(span) => {
                let start = source.byte(span.start);
                let mut end = source.byte(span.end).max(start);
                // An empty span (end of file, an empty value) still gets a caret.
                if end == start && start < source.text.len() {
                    end = start
                        + source.text[start..]
                            .chars()
                            .next()
                            .map_or(0, char::len_utf8);
                }
                let mut annotation = AnnotationKind::Primary.span(start..end);
                if let Some(label) = &d.label {
                    annotation = annotation.label(&**label);
                }
                groups.push(
                    title.element(
                        Snippet::source(&*source.text)
                            .path(source.name.as_str())
                            .fold(true)
                            .annotation(annotation),
                    ),
                );
            }
            None => {
                groups.push(title.element(annotate_snippets::Origin::path(source.name.as_str())));
            }
        }
        if let Some(hint) = &d.hint {
            groups.push(Group::with_title(
                Level::HELP.secondary_title(hint.as_str()),
            ));
        }
        renderer.render(&groups).to_string()
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render(false))
    }
}

/// The closest candidate to `word`, if one is close enough to be a typo.
pub fn suggest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let mut best: Option<(f64, &str)> = None;
    for c in candidates {
        let score = strsim::jaro_winkler(word, c);
        if score > 0.8 && best.is_none_or(|(s, _)| score > s) {
            best = Some((score, c));
        }
    }
    best.map(|(_, c)| c)
}

/// `did you mean `x`?` for the closest candidate, if any.
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<String> {
    suggest(word, candidates).map(|c| format!("did you mean `{c}`?"))
}
