//! HCL 1, which SPIRE reads, takes a whole block on one line
//! (`KeyManager "disk" { plugin_data { keys_path = "k" } }`); HCL 2, which Sigil reads, allows a
//! one-line block to hold a single attribute only. Where the parser fails on such a line, this
//! names the rule and shows the same block over several lines, ready to paste, instead of the
//! parser's "expected '='".

/// The message for a syntax error on `line` (one-based) of `text` when that line holds a
/// one-line block that HCL 2 refuses, with the block rewritten over several lines; `None`
/// when the line is something else.
pub(super) fn one_line_block(text: &str, line: usize) -> Option<String> {
    let source = text.lines().nth(line.checked_sub(1)?)?;
    let indent: String = source.chars().take_while(|c| c.is_whitespace()).collect();
    let tokens = tokenize(source.trim())?;
    let inner = one_line_contents(&tokens)?;
    let layout = multi_line(&tokens, &indent)?;
    // Only a layout the parser takes is worth showing.
    hcl_edit::parser::parse_body(&layout).ok()?;
    let rule = match inner {
        Inner::NestedBlock => "a block written on one line cannot hold a nested block",
        Inner::SeveralAttributes => "a block written on one line can hold only one attribute",
    };
    Some(format!(
        "{rule} (HCL 1 style, as SPIRE accepts it); Sigil reads HCL 2, so write it over several lines:\n{layout}"
    ))
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Open,
    Close,
    Equals,
    /// A name, a label, a number, a quoted string or a `[...]` list, as written.
    Word(String),
}

/// What a one-line block holds that HCL 2 refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Inner {
    NestedBlock,
    SeveralAttributes,
}

/// Splits one line into tokens; `None` for what this module does not rewrite (an unclosed
/// string or list). A trailing `#` or `//` comment is dropped.
fn tokenize(line: &str) -> Option<Vec<Token>> {
    let mut tokens = Vec::new();
    let mut chars = line.char_indices().peekable();
    while let Some(&(start, c)) = chars.peek() {
        match c {
            c if c.is_whitespace() || c == ',' => {
                chars.next();
            }
            '#' => break,
            '/' if line[start..].starts_with("//") => break,
            '{' | '}' | '=' => {
                chars.next();
                tokens.push(match c {
                    '{' => Token::Open,
                    '}' => Token::Close,
                    _ => Token::Equals,
                });
            }
            _ => {
                // A word runs to the next space, brace or `=` outside quotes and brackets.
                let (mut in_string, mut escaped, mut depth) = (false, false, 0usize);
                let mut end = line.len();
                while let Some(&(i, c)) = chars.peek() {
                    if in_string {
                        match (escaped, c) {
                            (true, _) => escaped = false,
                            (false, '\\') => escaped = true,
                            (false, '"') => in_string = false,
                            _ => {}
                        }
                    } else if c == '"' {
                        in_string = true;
                    } else if c == '[' {
                        depth += 1;
                    } else if c == ']' {
                        depth = depth.checked_sub(1)?;
                    } else if depth == 0 && (c.is_whitespace() || matches!(c, '{' | '}' | '=')) {
                        end = i;
                        break;
                    }
                    chars.next();
                }
                if in_string || depth > 0 {
                    return None;
                }
                // A comma that separates object items is not part of the value.
                let word = line[start..end].trim_end_matches(',');
                tokens.push(Token::Word(word.to_owned()));
            }
        }
    }
    Some(tokens)
}

/// Whether `tokens` open a block (`name "label" {`) whose contents, on this same line, HCL 2
/// refuses: a nested block or object, or more than one attribute.
fn one_line_contents(tokens: &[Token]) -> Option<Inner> {
    let open = tokens.iter().position(|t| *t == Token::Open)?;
    // `name = {` is an object value, which HCL 2 takes on one line.
    if open == 0 || tokens[..open].contains(&Token::Equals) {
        return None;
    }
    let inner = &tokens[open + 1..];
    if inner.contains(&Token::Open) {
        Some(Inner::NestedBlock)
    } else if inner.iter().filter(|t| **t == Token::Equals).count() > 1 {
        Some(Inner::SeveralAttributes)
    } else {
        None
    }
}

/// The block in `tokens` laid out over several lines, each level indented four more spaces
/// than `indent`; `None` unless the braces balance on the line.
fn multi_line(tokens: &[Token], indent: &str) -> Option<String> {
    let mut lines: Vec<String> = Vec::new();
    let mut depth = 0usize;
    let pad = |depth: usize| format!("{indent}{}", "    ".repeat(depth));
    let mut i = 0;
    while i < tokens.len() {
        match (&tokens[i], tokens.get(i + 1), tokens.get(i + 2)) {
            (Token::Word(key), Some(Token::Equals), Some(Token::Open)) => {
                lines.push(format!("{}{key} = {{", pad(depth)));
                depth += 1;
                i += 3;
            }
            (Token::Word(key), Some(Token::Equals), Some(Token::Word(value))) => {
                lines.push(format!("{}{key} = {value}", pad(depth)));
                i += 3;
            }
            (Token::Word(_), _, _) => {
                // A block header: its name and labels, up to the `{`.
                let mut header = Vec::new();
                while let Some(Token::Word(w)) = tokens.get(i) {
                    header.push(w.as_str());
                    i += 1;
                }
                if tokens.get(i) != Some(&Token::Open) {
                    return None;
                }
                lines.push(format!("{}{} {{", pad(depth), header.join(" ")));
                depth += 1;
                i += 1;
            }
            (Token::Close, _, _) => {
                depth = depth.checked_sub(1)?;
                lines.push(format!("{}}}", pad(depth)));
                i += 1;
            }
            (Token::Open | Token::Equals, _, _) => return None,
        }
    }
    (depth == 0 && !lines.is_empty()).then(|| lines.join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nested_one_line_block_is_shown_over_several_lines() {
        let text =
            "plugins {\n  KeyManager \"disk\" { plugin_data { keys_path = \"/k{1}\" } }\n}\n";
        let message = one_line_block(text, 2).unwrap();
        assert_eq!(
            message,
            "a block written on one line cannot hold a nested block (HCL 1 style, as SPIRE accepts it); \
             Sigil reads HCL 2, so write it over several lines:\n  \
             KeyManager \"disk\" {\n      plugin_data {\n          keys_path = \"/k{1}\"\n      }\n  }"
        );
    }

    #[test]
    fn several_attributes_and_objects_are_laid_out_too() {
        let text = "ratelimit { attestation = false, signing = true } # off\n";
        let message = one_line_block(text, 1).unwrap();
        assert!(
            message.starts_with("a block written on one line can hold only one attribute"),
            "{message}"
        );
        assert!(
            message.ends_with(":\nratelimit {\n    attestation = false\n    signing = true\n}"),
            "{message}"
        );
        let text = "NodeAttestor \"k8s_psat\" { plugin_data { clusters = { \"c\" = { service_account_allow_list = [\"spire:spire-agent\", \"a b\"] } } } }\n";
        let message = one_line_block(text, 1).unwrap();
        assert!(
            message.ends_with(
                ":\nNodeAttestor \"k8s_psat\" {\n    plugin_data {\n        clusters = {\n            \"c\" = {\n                service_account_allow_list = [\"spire:spire-agent\", \"a b\"]\n            }\n        }\n    }\n}"
            ),
            "{message}"
        );
    }

    #[test]
    fn other_lines_are_left_to_the_parser() {
        for line in [
            "plugin_data { keys_path = \"/k\" }",
            "ca_subject = { country = [\"US\"] }",
            "x = \"unclosed",
            "KeyManager \"disk\" { plugin_data {",
            "bind_port 8081",
        ] {
            assert_eq!(one_line_block(line, 1), None, "{line}");
        }
        assert_eq!(one_line_block("a = 1\n", 5), None);
    }
}
