//! nginx's configuration syntax: words, quoted strings with their escapes, `;`, `{`, `}`.

pub(super) enum Tok {
    Word(String),
    Semi,
    Open,
    Close,
}

pub(super) struct Token {
    pub(super) tok: Tok,
    pub(super) line: usize,
}

pub(super) fn is_break(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n' | ';' | '{')
}

/// Follows nginx's ngx_conf_read_token: `#` starts a comment only at a token start, `}` does not end a bare word,
/// and `${` stays inside a word.
pub(super) fn tokenize(text: &str) -> Result<Vec<Token>, (usize, String)> {
    let mut toks = Vec::new();
    let mut it = text.chars().peekable();
    let mut line = 1;
    while let Some(c) = it.next() {
        let start = line;
        let tok = match c {
            '\n' => {
                line += 1;
                continue;
            }
            ' ' | '\t' | '\r' => continue,
            '#' => {
                while it.next_if(|&c| c != '\n').is_some() {}
                continue;
            }
            ';' => Tok::Semi,
            '{' => Tok::Open,
            '}' => Tok::Close,
            '"' | '\'' => {
                let mut w = String::new();
                loop {
                    match it.next() {
                        None => return Err((start, "unterminated quoted string".into())),
                        Some(q) if q == c => break,
                        Some('\\') => match it.next() {
                            Some(e) => escape(&mut w, e, &mut line),
                            None => return Err((start, "unterminated quoted string".into())),
                        },
                        Some(ch) => {
                            line += usize::from(ch == '\n');
                            w.push(ch);
                        }
                    }
                }
                if let Some(&n) = it.peek() {
                    if !is_break(n) {
                        return Err((line, format!("unexpected `{n}` after a quoted string")));
                    }
                }
                Tok::Word(w)
            }
            _ => {
                let mut w = String::new();
                let mut ch = c;
                loop {
                    match ch {
                        '\\' => match it.next() {
                            Some(e) => escape(&mut w, e, &mut line),
                            None => w.push('\\'),
                        },
                        '$' => {
                            w.push('$');
                            w.extend(it.next_if_eq(&'{'));
                        }
                        _ => w.push(ch),
                    }
                    match it.next_if(|&n| !is_break(n)) {
                        Some(n) => ch = n,
                        None => break,
                    }
                }
                Tok::Word(w)
            }
        };
        toks.push(Token { tok, line: start });
    }
    Ok(toks)
}

pub(super) fn escape(w: &mut String, e: char, line: &mut usize) {
    match e {
        '"' | '\'' | '\\' => w.push(e),
        't' => w.push('\t'),
        'r' => w.push('\r'),
        'n' => w.push('\n'),
        _ => {
            *line += usize::from(e == '\n');
            w.push('\\');
            w.push(e);
        }
    }
}
