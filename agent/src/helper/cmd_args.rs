//! `cmd_args` split into an argument vector exactly as spiffe-helper splits it: Go's
//! `encoding/csv` reader with a space as the separator. Fields are separated by single spaces
//! (two spaces make an empty argument); a field that starts with `"` is quoted, may hold
//! spaces, and writes a literal quote as `""`; a `"` inside an unquoted field is an error, as is
//! a quoted field followed by anything but a space. No shell rules: single quotes are ordinary
//! characters. One difference: a line break outside quotes is refused, where Go's reader
//! silently drops everything after it.

/// Splits `cmd_args` into arguments; `Err` says what is malformed.
pub(super) fn split_cmd_args(text: &str) -> Result<Vec<String>, String> {
    if text.is_empty() {
        return Ok(Vec::new());
    }
    let text = text.replace("\r\n", "\n");
    let mut args = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        let mut field = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    Some('"') => match chars.peek() {
                        Some('"') => {
                            chars.next();
                            field.push('"');
                        }
                        Some(' ') | None => break,
                        Some(_) => {
                            return Err(
                                "extraneous or missing \" in a quoted argument of cmd_args"
                                    .to_owned(),
                            );
                        }
                    },
                    Some(c) => field.push(c),
                    None => return Err("unterminated quoted argument in cmd_args".to_owned()),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                match c {
                    ' ' => break,
                    '"' => {
                        return Err(
                            "a bare \" in an unquoted argument of cmd_args (quote the whole \
                             argument and write \"\" for a quote)"
                                .to_owned(),
                        );
                    }
                    '\n' => return Err("cmd_args holds a line break outside quotes".to_owned()),
                    _ => {
                        field.push(c);
                        chars.next();
                    }
                }
            }
        }
        args.push(field);
        match chars.next() {
            Some(' ') => {}
            None => return Ok(args),
            Some(_) => unreachable!("a field ends at a space or the end"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(s: &str) -> Vec<String> {
        split_cmd_args(s).unwrap()
    }

    #[test]
    fn splits_as_go_csv_with_a_space_separator() {
        assert_eq!(split(""), Vec::<String>::new());
        assert_eq!(split("a b"), ["a", "b"]);
        assert_eq!(split("a  b"), ["a", "", "b"]);
        assert_eq!(split("a "), ["a", ""]);
        assert_eq!(split("\"two words\""), ["two words"]);
        assert_eq!(split("\"say \"\"hi\"\"\" x"), ["say \"hi\"", "x"]);
        assert_eq!(split("-c 'ls -l /'"), ["-c", "'ls", "-l", "/'"]);
        assert_eq!(
            split("-c \"echo 'hi'; exit 3\""),
            ["-c", "echo 'hi'; exit 3"]
        );
        assert_eq!(split("\"multi\nline\""), ["multi\nline"]);
    }

    #[test]
    fn refuses_what_go_csv_refuses() {
        for bad in ["a\"b", "\"open", "\"q\"x", "a\nb"] {
            assert!(split_cmd_args(bad).is_err(), "{bad:?}");
        }
    }
}
