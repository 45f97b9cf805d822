//! A YAML loader that keeps where every node came from.
//!
//! serde_yaml reports the position of the first error only and forgets
//! positions once a value is built. Diagnostics need the span of every key and
//! value, and validation must report all problems at once, so the planner
//! builds this small located tree from saphyr-parser's event stream and reads
//! the workflow out of it by hand.

use std::collections::{HashMap, HashSet};

use saphyr_parser::{Event, Parser, ScalarStyle, SpannedEventReceiver};

use super::diag::{Diagnostic, Span};

/// How a scalar was written, which decides how template offsets map back to
/// file positions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Style {
    /// `key: value`
    Plain,
    /// `'value'` or `"value"`
    Quoted,
    /// `|` or `>` block scalars.
    Block,
}

/// A YAML node and its span.
#[derive(Clone, Debug)]
pub struct Node {
    /// What the node holds.
    pub kind: Kind,
    /// Where it is in the file.
    pub span: Span,
}

/// The shape of a node.
#[derive(Clone, Debug)]
pub enum Kind {
    /// A scalar as written (plain scalars are typed by the reader).
    Scalar(String, Style),
    /// A sequence.
    Seq(Vec<Node>),
    /// A mapping, in file order. Keys are scalars.
    Map(Vec<(Node, Node)>),
}

impl Node {
    /// The scalar text, if this is a scalar.
    pub fn as_str(&self) -> Option<&str> {
        match &self.kind {
            Kind::Scalar(s, _) => Some(s),
            _ => None,
        }
    }

    /// True for `~`, `null` and empty plain scalars.
    pub fn is_null(&self) -> bool {
        matches!(&self.kind, Kind::Scalar(s, Style::Plain) if matches!(s.as_str(), "" | "~" | "null" | "Null" | "NULL"))
    }

    /// What the node is, for "expected X, found Y" messages.
    pub fn describe(&self) -> &'static str {
        match &self.kind {
            Kind::Scalar(..) if self.is_null() => "nothing (null)",
            Kind::Scalar(..) => "a scalar",
            Kind::Seq(_) => "a list",
            Kind::Map(_) => "a mapping",
        }
    }

    /// Converts a scalar to JSON the way YAML 1.2 core schema types plain
    /// scalars: booleans, integers, floats and null; quoted ones stay strings.
    pub fn to_json(&self) -> serde_json::Value {
        match &self.kind {
            Kind::Scalar(s, Style::Plain) => plain_scalar_json(s),
            Kind::Scalar(s, _) => serde_json::Value::String(s.clone()),
            Kind::Seq(items) => items.iter().map(Node::to_json).collect(),
            Kind::Map(entries) => entries
                .iter()
                .map(|(k, v)| (k.as_str().unwrap_or_default().to_string(), v.to_json()))
                .collect::<serde_json::Map<_, _>>()
                .into(),
        }
    }
}

fn plain_scalar_json(s: &str) -> serde_json::Value {
    match s {
        "" | "~" | "null" | "Null" | "NULL" => serde_json::Value::Null,
        "true" | "True" | "TRUE" => true.into(),
        "false" | "False" | "FALSE" => false.into(),
        _ => {
            if let Ok(i) = s.parse::<i64>() {
                i.into()
            } else if let Some(f) = s
                .parse::<f64>()
                .ok()
                .filter(|f| f.is_finite() && s.chars().any(|c| c.is_ascii_digit()))
            {
                serde_json::Number::from_f64(f).map_or_else(|| s.into(), Into::into)
            } else {
                s.into()
            }
        }
    }
}

/// Parses one YAML document. A syntax error is fatal (returned as `Err`);
/// duplicate keys are reported in `warnings_and_errors` and the first value
/// wins, so reading can go on and find more problems.
pub fn load(text: &str) -> Result<(Node, Vec<Diagnostic>), Diagnostic> {
    let mut builder = Builder::default();
    let mut parser = Parser::new_from_str(text);
    if let Err(e) = parser.load(&mut builder, true) {
        let m = e.marker();
        return Err(Diagnostic::error(
            format!("invalid YAML: {}", e.info()),
            Some(Span::new(m.index(), m.index(), m.line(), m.col() + 1)),
        ));
    }
    if let Some(fatal) = builder.fatal {
        return Err(fatal);
    }
    let mut docs = builder.docs.into_iter();
    let Some(doc) = docs.next() else {
        return Err(Diagnostic::error("the file holds no YAML document", None)
            .with_hint("a workflow needs at least a `jobs:` mapping"));
    };
    if let Some(extra) = docs.next() {
        return Err(Diagnostic::error(
            "the file holds more than one YAML document",
            Some(extra.span),
        )
        .with_label("second document starts here")
        .with_hint("put one workflow in each file"));
    }
    Ok((doc, builder.problems))
}

/// Upper bound on nodes after alias expansion.
const MAX_NODES: usize = 5_000_000;

fn count_nodes(node: &Node) -> usize {
    match &node.kind {
        Kind::Scalar(..) => 1,
        Kind::Seq(items) => 1 + items.iter().map(count_nodes).sum::<usize>(),
        Kind::Map(entries) => {
            1 + entries
                .iter()
                .map(|(k, v)| count_nodes(k) + count_nodes(v))
                .sum::<usize>()
        }
    }
}

enum Frame {
    Seq {
        start: Span,
        anchor: usize,
        items: Vec<Node>,
    },
    Map {
        start: Span,
        anchor: usize,
        entries: Vec<(Node, Node)>,
        keys: HashSet<String>,
        first_seen: HashMap<String, usize>,
        pending_key: Option<Node>,
    },
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    docs: Vec<Node>,
    anchors: HashMap<usize, Node>,
    /// Nodes created so far, aliases counted in full: bounds "billion laughs".
    nodes: usize,
    problems: Vec<Diagnostic>,
    fatal: Option<Diagnostic>,
}

fn span_of(s: saphyr_parser::Span) -> Span {
    Span::new(
        s.start.index(),
        s.end.index(),
        s.start.line(),
        s.start.col() + 1,
    )
}

impl Builder {
    fn push(&mut self, node: Node, anchor: usize) {
        if anchor != 0 {
            self.anchors.insert(anchor, node.clone());
        }
        match self.stack.last_mut() {
            None => self.docs.push(node),
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map {
                entries,
                keys,
                first_seen,
                pending_key,
                ..
            }) => match pending_key.take() {
                None => {
                    if !matches!(node.kind, Kind::Scalar(..)) {
                        self.fatal.get_or_insert(
                            Diagnostic::error("mapping keys must be plain text", Some(node.span))
                                .with_label("this key is a list or mapping"),
                        );
                    }
                    *pending_key = Some(node);
                }
                Some(key) => {
                    let name = key.as_str().unwrap_or_default().to_string();
                    if keys.insert(name.clone()) {
                        first_seen.insert(name, key.span.line);
                        entries.push((key, node));
                    } else {
                        let first = first_seen.get(&name).copied().unwrap_or_default();
                        self.problems.push(
                            Diagnostic::error(format!("duplicate key `{name}`"), Some(key.span))
                                .with_label(format!("`{name}` is already set on line {first}"))
                                .with_hint(
                                    "each key may appear once in a mapping; remove or rename one",
                                ),
                        );
                    }
                }
            },
        }
    }
}

impl<'input> SpannedEventReceiver<'input> for Builder {
    fn on_event(&mut self, ev: Event<'input>, span: saphyr_parser::Span) {
        if self.fatal.is_some() {
            return;
        }
        let span = span_of(span);
        match ev {
            Event::Scalar(value, style, anchor, tag) => {
                if tag.is_some() {
                    self.fatal = Some(
                        Diagnostic::error("YAML tags are not supported", Some(span))
                            .with_hint("remove the `!tag`; quote the value if it must stay text"),
                    );
                    return;
                }
                let style = match style {
                    ScalarStyle::Plain => Style::Plain,
                    ScalarStyle::SingleQuoted | ScalarStyle::DoubleQuoted => Style::Quoted,
                    ScalarStyle::Literal | ScalarStyle::Folded => Style::Block,
                };
                self.push(
                    Node {
                        kind: Kind::Scalar(value.into_owned(), style),
                        span,
                    },
                    anchor,
                );
            }
            Event::SequenceStart(anchor, tag) | Event::MappingStart(anchor, tag)
                if tag.is_some() =>
            {
                let _ = anchor;
                self.fatal = Some(
                    Diagnostic::error("YAML tags are not supported", Some(span))
                        .with_hint("remove the `!tag`"),
                );
            }
            Event::SequenceStart(anchor, _) => self.stack.push(Frame::Seq {
                start: span,
                anchor,
                items: Vec::new(),
            }),
            Event::MappingStart(anchor, _) => self.stack.push(Frame::Map {
                start: span,
                anchor,
                entries: Vec::new(),
                keys: HashSet::new(),
                first_seen: HashMap::new(),
                pending_key: None,
            }),
            Event::SequenceEnd | Event::MappingEnd => {
                let (node, anchor) = match self.stack.pop() {
                    Some(Frame::Seq {
                        start,
                        anchor,
                        items,
                    }) => (
                        Node {
                            kind: Kind::Seq(items),
                            span: Span::new(start.start, span.end, start.line, start.col),
                        },
                        anchor,
                    ),
                    Some(Frame::Map {
                        start,
                        anchor,
                        entries,
                        ..
                    }) => (
                        Node {
                            kind: Kind::Map(entries),
                            span: Span::new(start.start, span.end, start.line, start.col),
                        },
                        anchor,
                    ),
                    None => return,
                };
                self.push(node, anchor);
            }
            Event::Alias(id) => match self.anchors.get(&id).cloned() {
                Some(mut node) => {
                    self.nodes += count_nodes(&node);
                    if self.nodes > MAX_NODES {
                        self.fatal = Some(
                            Diagnostic::error(
                                format!("YAML aliases expand to more than {MAX_NODES} nodes"),
                                Some(span),
                            )
                            .with_hint(
                                "a workflow file this large is almost certainly an alias bomb",
                            ),
                        );
                        return;
                    }
                    node.span = span;
                    self.push(node, 0);
                }
                None => {
                    self.fatal = Some(Diagnostic::error("unknown YAML alias", Some(span)));
                }
            },
            Event::Nothing
            | Event::StreamStart
            | Event::StreamEnd
            | Event::DocumentStart(_)
            | Event::DocumentEnd => {}
        }
    }
}
