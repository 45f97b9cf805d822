//! Safe interpolation into shell scripts.
//!
//! A value rendered into `run:` text must never become shell code. The
//! template formatter wraps every interpolated value in two private-use
//! characters; this module then walks the rendered script with a small model
//! of shell quoting and replaces each wrapped value by a reference to an
//! environment variable that holds it:
//!
//! ```text
//! context of {{ x }}          becomes                 why
//! unquoted   echo {{ x }}     echo "${KRT_V1}"        no word splitting, no globbing
//! "..."      "v={{ x }}"      "v=${KRT_V1}"           expands inside double quotes
//! '...'      'v={{ x }}'      'v='"${KRT_V1}"''       close, splice, reopen the quote
//! $(( ))     $(( {{ n }}+1 )) $(( ${KRT_V1}+1 ))      the value must be an integer
//! <<EOF      {{ x }}          ${KRT_V1}               heredoc bodies expand variables
//! <<'EOF'    {{ x }}          the value itself        nothing expands; the value may
//!                                                     not contain the delimiter line
//! # comment  {{ x }}          ${KRT_V1}               inert
//! ```
//!
//! The shell expands a variable's value exactly once and never parses it as
//! code, so `a; rm -rf ~` stays one harmless argument.

use std::collections::BTreeMap;

/// Starts an interpolated value in rendered text.
pub const OPEN: char = '\u{E000}';
/// Ends an interpolated value in rendered text.
pub const CLOSE: char = '\u{E001}';

/// A script with its interpolated values moved into variables.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SafeScript {
    /// The script the shell runs.
    pub script: String,
    /// `KRT_V<n>` -> value.
    pub vars: BTreeMap<String, String>,
    /// The script with values spliced in, for people (logs, `krt graph`).
    pub display: String,
}

/// Removes the markers, splicing values in as plain text (for non-shell
/// `shell:` steps and for display).
pub fn strip_markers(rendered: &str) -> String {
    rendered
        .chars()
        .filter(|c| *c != OPEN && *c != CLOSE)
        .collect()
}

#[derive(Clone, Debug, PartialEq)]
enum Ctx {
    /// Top level or inside `$( )`.
    Unquoted {
        subst: bool,
    },
    Backtick,
    Double,
    Single {
        ansi: bool,
    },
    Arith {
        depth: u32,
    },
    Comment,
    Heredoc {
        delim: String,
        quoted: bool,
        strip_tabs: bool,
    },
}

#[derive(Clone, Debug)]
struct PendingHeredoc {
    delim: String,
    quoted: bool,
    strip_tabs: bool,
}

/// Replaces every marked value in `rendered` by a variable reference suited to
/// its quoting context. Errors name the value and why it cannot be used there.
pub fn make_safe(rendered: &str) -> Result<SafeScript, String> {
    let chars: Vec<char> = rendered.chars().collect();
    let mut out = String::with_capacity(rendered.len() + 16);
    let mut vars: BTreeMap<String, String> = BTreeMap::new();
    let mut by_value: BTreeMap<String, String> = BTreeMap::new();
    let mut stack = vec![Ctx::Unquoted { subst: false }];
    let mut pending: Vec<PendingHeredoc> = Vec::new();
    let mut at_line_start = true;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let top = stack
            .last()
            .cloned()
            .unwrap_or(Ctx::Unquoted { subst: false });

        // A heredoc body ends at a line equal to its delimiter.
        if at_line_start
            && let Ctx::Heredoc {
                delim, strip_tabs, ..
            } = &top
        {
            let end = chars[i..]
                .iter()
                .position(|c| *c == '\n')
                .map_or(chars.len(), |p| i + p);
            let line: String = chars[i..end].iter().collect();
            let line_cmp = if *strip_tabs {
                line.trim_start_matches('\t')
            } else {
                line.as_str()
            };
            if line_cmp == delim {
                out.push_str(&line);
                stack.pop();
                i = end;
                at_line_start = false;
                continue;
            }
        }
        at_line_start = false;

        if c == OPEN {
            let end = chars[i + 1..]
                .iter()
                .position(|c| *c == CLOSE)
                .map(|p| i + 1 + p)
                .ok_or("internal error: unterminated interpolation marker")?;
            let value: String = chars[i + 1..end].iter().collect();
            i = end + 1;
            let mut var = || -> String {
                if let Some(v) = by_value.get(&value) {
                    return v.clone();
                }
                let name = format!("KRT_V{}", vars.len() + 1);
                vars.insert(name.clone(), value.clone());
                by_value.insert(value.clone(), name.clone());
                name
            };
            match &top {
                Ctx::Unquoted { .. } | Ctx::Backtick => {
                    let v = var();
                    out.push_str(&format!("\"${{{v}}}\""));
                }
                Ctx::Double | Ctx::Comment | Ctx::Heredoc { quoted: false, .. } => {
                    let v = var();
                    out.push_str(&format!("${{{v}}}"));
                }
                Ctx::Single { ansi } => {
                    let v = var();
                    let reopen = if *ansi { "$'" } else { "'" };
                    out.push_str(&format!("'\"${{{v}}}\"{reopen}"));
                }
                Ctx::Arith { .. } => {
                    let t = value.trim();
                    let digits = t.strip_prefix(['-', '+']).unwrap_or(t);
                    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                        return Err(format!(
                            "the value `{value}` is used in shell arithmetic but is not an integer"
                        ));
                    }
                    let v = var();
                    out.push_str(&format!("${{{v}}}"));
                }
                Ctx::Heredoc {
                    quoted: true,
                    delim,
                    ..
                } => {
                    if value.lines().any(|l| l.trim_start_matches('\t') == delim) {
                        return Err(format!(
                            "the value `{value}` contains the line `{delim}`, which would end the quoted heredoc early"
                        ));
                    }
                    out.push_str(&value);
                }
            }
            continue;
        }

        let next = chars.get(i + 1).copied();
        let next2 = chars.get(i + 2).copied();
        match top {
            Ctx::Unquoted { subst } => match c {
                '\\' => {
                    out.push(c);
                    if let Some(n) = next.filter(|n| *n != OPEN) {
                        out.push(n);
                        i += 1;
                    }
                }
                '\'' => {
                    let ansi = out.ends_with('$');
                    stack.push(Ctx::Single { ansi });
                    out.push(c);
                }
                '"' => {
                    stack.push(Ctx::Double);
                    out.push(c);
                }
                '`' => {
                    stack.push(Ctx::Backtick);
                    out.push(c);
                }
                '$' if next == Some('(') && next2 == Some('(') => {
                    stack.push(Ctx::Arith { depth: 0 });
                    out.push_str("$((");
                    i += 2;
                }
                '$' if next == Some('(') => {
                    stack.push(Ctx::Unquoted { subst: true });
                    out.push_str("$(");
                    i += 1;
                }
                '(' if next == Some('(') => {
                    stack.push(Ctx::Arith { depth: 0 });
                    out.push_str("((");
                    i += 1;
                }
                ')' if subst => {
                    stack.pop();
                    out.push(c);
                }
                '#' if out.is_empty() || out.ends_with(|p: char| p.is_whitespace() || p == ';') => {
                    stack.push(Ctx::Comment);
                    out.push(c);
                }
                '<' if next == Some('<') && next2 != Some('<') => {
                    let (len, heredoc) = parse_heredoc_operator(&chars[i + 2..]);
                    if let Some(h) = heredoc {
                        pending.push(h);
                    }
                    out.extend(&chars[i..i + 2 + len]);
                    i += 1 + len;
                }
                '<' if next == Some('<') => {
                    // Here-string `<<<`: not a heredoc.
                    out.push_str("<<<");
                    i += 2;
                }
                '\n' => {
                    out.push(c);
                    at_line_start = true;
                    // Heredoc bodies start on the next line, in the order declared.
                    for h in pending.drain(..).rev() {
                        stack.push(Ctx::Heredoc {
                            delim: h.delim,
                            quoted: h.quoted,
                            strip_tabs: h.strip_tabs,
                        });
                    }
                }
                _ => out.push(c),
            },
            Ctx::Backtick => {
                out.push(c);
                if c == '\\'
                    && let Some(n) = next.filter(|n| *n != OPEN)
                {
                    out.push(n);
                    i += 1;
                } else if c == '`' {
                    stack.pop();
                }
            }
            Ctx::Double => match c {
                '\\' => {
                    out.push(c);
                    if let Some(n) = next.filter(|n| *n != OPEN) {
                        out.push(n);
                        i += 1;
                    }
                }
                '"' => {
                    stack.pop();
                    out.push(c);
                }
                '`' => {
                    stack.push(Ctx::Backtick);
                    out.push(c);
                }
                '$' if next == Some('(') && next2 == Some('(') => {
                    stack.push(Ctx::Arith { depth: 0 });
                    out.push_str("$((");
                    i += 2;
                }
                '$' if next == Some('(') => {
                    stack.push(Ctx::Unquoted { subst: true });
                    out.push_str("$(");
                    i += 1;
                }
                _ => out.push(c),
            },
            Ctx::Single { ansi } => {
                out.push(c);
                if ansi
                    && c == '\\'
                    && let Some(n) = next.filter(|n| *n != OPEN)
                {
                    out.push(n);
                    i += 1;
                } else if c == '\'' {
                    stack.pop();
                }
            }
            Ctx::Arith { depth } => {
                out.push(c);
                match c {
                    '(' => set_depth(&mut stack, depth + 1),
                    ')' if depth == 0 && next == Some(')') => {
                        out.push(')');
                        i += 1;
                        stack.pop();
                    }
                    ')' => set_depth(&mut stack, depth.saturating_sub(1)),
                    _ => {}
                }
            }
            Ctx::Comment => {
                if c == '\n' {
                    stack.pop();
                    // Let the enclosing context see the newline (heredocs start here).
                    continue;
                }
                out.push(c);
            }
            Ctx::Heredoc { .. } => {
                out.push(c);
                if c == '\n' {
                    at_line_start = true;
                }
            }
        }
        i += 1;
    }
    Ok(SafeScript {
        script: out,
        vars,
        display: strip_markers(rendered),
    })
}

fn set_depth(stack: &mut [Ctx], depth: u32) {
    if let Some(Ctx::Arith { depth: d }) = stack.last_mut() {
        *d = depth;
    }
}

/// Parses what follows `<<`: an optional `-`, blanks and the delimiter word.
/// Returns the characters consumed and the heredoc, if a word was found.
fn parse_heredoc_operator(rest: &[char]) -> (usize, Option<PendingHeredoc>) {
    let mut i = 0;
    let strip_tabs = rest.first() == Some(&'-');
    if strip_tabs {
        i += 1;
    }
    while rest.get(i).is_some_and(|c| *c == ' ' || *c == '\t') {
        i += 1;
    }
    let mut delim = String::new();
    let mut quoted = false;
    while let Some(&c) = rest.get(i) {
        match c {
            '\'' | '"' => {
                quoted = true;
                let close = rest[i + 1..].iter().position(|x| *x == c);
                let Some(p) = close else { break };
                delim.extend(&rest[i + 1..i + 1 + p]);
                i += p + 2;
            }
            '\\' => {
                quoted = true;
                if let Some(&n) = rest.get(i + 1) {
                    delim.push(n);
                }
                i += 2;
            }
            c if c.is_whitespace() || matches!(c, ';' | '|' | '&' | '<' | '>' | '(' | ')') => break,
            c if c == OPEN || c == CLOSE => break,
            c => {
                delim.push(c);
                i += 1;
            }
        }
    }
    let heredoc = (!delim.is_empty()).then_some(PendingHeredoc {
        delim,
        quoted,
        strip_tabs,
    });
    (i.min(rest.len()), heredoc)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> String {
        format!("{OPEN}{s}{CLOSE}")
    }

    #[test]
    fn unquoted_value_becomes_a_quoted_reference() {
        let s = make_safe(&format!("echo {}", v("a; rm -rf ~"))).unwrap();
        assert_eq!(s.script, "echo \"${KRT_V1}\"");
        assert_eq!(s.vars["KRT_V1"], "a; rm -rf ~");
        assert_eq!(s.display, "echo a; rm -rf ~");
    }

    #[test]
    fn value_inside_double_quotes_becomes_a_bare_reference() {
        let s = make_safe(&format!("echo \"v={}\"", v("x"))).unwrap();
        assert_eq!(s.script, "echo \"v=${KRT_V1}\"");
    }

    #[test]
    fn value_inside_single_quotes_is_spliced_out_of_the_quotes() {
        let s = make_safe(&format!("echo 'v={}!'", v("x"))).unwrap();
        assert_eq!(s.script, "echo 'v='\"${KRT_V1}\"'!'");
    }

    #[test]
    fn arithmetic_takes_integers_only() {
        let s = make_safe(&format!("echo $(( {} + 1 ))", v("41"))).unwrap();
        assert_eq!(s.script, "echo $(( ${KRT_V1} + 1 ))");
        let e = make_safe(&format!("echo $(( {} + 1 ))", v("a[$(id)]"))).unwrap_err();
        assert!(e.contains("not an integer"), "{e}");
    }

    #[test]
    fn unquoted_heredoc_gets_a_reference_and_ends_at_its_delimiter() {
        let s = make_safe(&format!("cat <<EOF\nhi {}\nEOF\necho {}", v("x"), v("y"))).unwrap();
        assert_eq!(s.script, "cat <<EOF\nhi ${KRT_V1}\nEOF\necho \"${KRT_V2}\"");
    }

    #[test]
    fn quoted_heredoc_refuses_a_value_that_would_close_it() {
        let ok = make_safe(&format!("cat <<'EOF'\n{}\nEOF", v("plain"))).unwrap();
        assert_eq!(ok.script, "cat <<'EOF'\nplain\nEOF");
        let e = make_safe(&format!("cat <<'EOF'\n{}\nEOF", v("x\nEOF\nrm -rf ~"))).unwrap_err();
        assert!(e.contains("heredoc"), "{e}");
    }

    #[test]
    fn command_substitution_inside_double_quotes_is_unquoted_again() {
        let s = make_safe(&format!("echo \"$(basename {})\"", v("a b"))).unwrap();
        assert_eq!(s.script, "echo \"$(basename \"${KRT_V1}\")\"");
    }

    #[test]
    fn repeated_values_share_one_variable() {
        let s = make_safe(&format!("echo {} {}", v("x"), v("x"))).unwrap();
        assert_eq!(s.vars.len(), 1);
    }

    #[test]
    fn comments_and_escaped_quotes_do_not_confuse_the_scanner() {
        let s = make_safe(&format!("echo \\\" # it's\necho {}", v("x"))).unwrap();
        assert_eq!(s.script, "echo \\\" # it's\necho \"${KRT_V1}\"");
    }
}
