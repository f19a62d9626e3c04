//! Files into a directive tree: reading with caps, `include` with its glob, blocks nested
//! within a depth.

use super::*;

pub(super) fn read_capped(path: &Path) -> Result<String, String> {
    let f = std::fs::File::open(path).map_err(|e| e.to_string())?;
    // A FIFO or device would block or never end.
    if !f.metadata().map_err(|e| e.to_string())?.is_file() {
        return Err("not a regular file".into());
    }
    let mut buf = Vec::new();
    f.take(MAX_FILE_BYTES as u64 + 1).read_to_end(&mut buf).map_err(|e| e.to_string())?;
    if buf.len() > MAX_FILE_BYTES {
        return Err("file is larger than 1 MiB".into());
    }
    String::from_utf8(buf).map_err(|_| "file is not valid UTF-8".into())
}

pub(super) struct Directive {
    pub(super) name: String,
    pub(super) args: Vec<String>,
    pub(super) at: Loc,
    pub(super) block: Option<Vec<Directive>>,
}

impl Directive {
    pub(super) fn items(&self) -> &[Directive] {
        self.block.as_deref().unwrap_or_default()
    }
    pub(super) fn arg(&self) -> Option<&str> {
        match self.args.as_slice() {
            [a] => Some(a),
            _ => None,
        }
    }
    /// The directive as written, shortened for messages.
    pub(super) fn show(&self) -> String {
        let s = std::iter::once(&self.name).chain(&self.args).cloned().collect::<Vec<_>>().join(" ");
        if s.chars().count() > 60 { s.chars().take(57).chain("...".chars()).collect() } else { s }
    }
}

/// Reads files into one directive tree, splicing includes in place as nginx does.
pub(super) struct Loader {
    pub(super) base: PathBuf,
    pub(super) stack: Vec<PathBuf>,
    pub(super) files: usize,
    pub(super) rep: Report,
}

impl Loader {
    pub(super) fn parse(&mut self, text: &str, file: &Rc<str>, depth: usize) -> Vec<Directive> {
        self.rep.rank(file);
        match tokenize(text) {
            Ok(toks) => self.block(&toks, &mut 0, file, depth, None).unwrap_or_default(),
            Err((line, msg)) => {
                self.rep.refuse(&Loc { file: file.clone(), line }, msg);
                Vec::new()
            }
        }
    }

    /// `opened` is the line of the `{` this block hangs off; `None` for a file's top level.
    pub(super) fn block(
        &mut self,
        toks: &[Token],
        pos: &mut usize,
        file: &Rc<str>,
        depth: usize,
        opened: Option<usize>,
    ) -> Option<Vec<Directive>> {
        let at = |line| Loc { file: file.clone(), line };
        let (mut items, mut words, mut first) = (Vec::new(), Vec::<String>::new(), 0);
        while let Some(t) = toks.get(*pos) {
            *pos += 1;
            let fail = match &t.tok {
                Tok::Word(w) => {
                    if words.is_empty() {
                        first = t.line;
                    }
                    words.push(w.clone());
                    continue;
                }
                Tok::Semi if words.is_empty() => "unexpected `;`".to_string(),
                Tok::Semi => {
                    let name = words.remove(0);
                    let d = Directive { name, args: std::mem::take(&mut words), at: at(first), block: None };
                    if d.name == "include" {
                        self.include(&d, depth, &mut items);
                    } else {
                        items.push(d);
                    }
                    continue;
                }
                Tok::Open if words.is_empty() => "unexpected `{`".to_string(),
                Tok::Open if depth >= MAX_BLOCK_DEPTH => "blocks are nested too deeply".to_string(),
                Tok::Open => {
                    let name = words.remove(0);
                    let args = std::mem::take(&mut words);
                    let block = Some(self.block(toks, pos, file, depth + 1, Some(t.line))?);
                    items.push(Directive { name, args, at: at(first), block });
                    continue;
                }
                Tok::Close => match (words.first(), opened) {
                    (Some(w), _) => format!("unexpected `}}`: `{w}` on line {first} is missing its `;`"),
                    (None, None) => "unexpected `}` (no block is open)".to_string(),
                    (None, Some(_)) => return Some(items),
                },
            };
            self.rep.refuse(&at(t.line), fail);
            return None;
        }
        let last = toks.last().map_or(1, |t| t.line);
        if let Some(w) = words.first() {
            self.rep.refuse(&at(first), format!("unexpected end of file: `{w}` is missing its `;`"));
            return None;
        }
        if let Some(open) = opened {
            self.rep.refuse(&at(last), format!("unexpected end of file: the block opened on line {open} has no `}}`"));
            return None;
        }
        Some(items)
    }

    pub(super) fn include(&mut self, d: &Directive, depth: usize, out: &mut Vec<Directive>) {
        let Some(pat) = d.arg() else {
            return self.rep.refuse(&d.at, "`include` takes exactly one path");
        };
        let full = self.base.join(pat);
        let (Some(dir), Some(fname)) = (full.parent(), full.file_name().and_then(|f| f.to_str())) else {
            return self.rep.refuse(&d.at, format!("`include {pat}`: not a file path"));
        };
        if fname == "mime.types" {
            return self.rep.note(&d.at, format!("`include {pat}` ignored (MIME types do not affect proxied traffic)"));
        }
        if self.stack.len() >= MAX_INCLUDE_DEPTH {
            return self.rep.refuse(&d.at, format!("`include {pat}`: includes nest deeper than {MAX_INCLUDE_DEPTH}"));
        }
        let paths = if fname.contains(['*', '?', '[']) {
            if dir.to_string_lossy().contains(['*', '?', '[']) || fname.contains('[') {
                return self.rep.refuse(&d.at, format!("`include {pat}`: only `*` and `?` in the last component"));
            }
            match glob(dir, fname) {
                Ok(v) if v.is_empty() => {
                    self.rep.note(&d.at, format!("`include {pat}` matched no files"));
                    v
                }
                Ok(v) => v,
                Err(e) => return self.rep.refuse(&d.at, format!("`include {pat}`: {e}")),
            }
        } else {
            vec![full.clone()]
        };
        for p in paths {
            self.load(&p, d, depth, out);
        }
    }

    pub(super) fn load(&mut self, path: &Path, from: &Directive, depth: usize, out: &mut Vec<Directive>) {
        let shown = path.display().to_string();
        let canon = match std::fs::canonicalize(path) {
            Ok(c) => c,
            Err(e) => return self.rep.refuse(&from.at, format!("include {shown}: {e}")),
        };
        if self.stack.contains(&canon) {
            return self.rep.refuse(&from.at, format!("include {shown}: include loop"));
        }
        self.files += 1;
        if self.files > MAX_FILES {
            return self.rep.refuse(&from.at, format!("include {shown}: more than {MAX_FILES} files"));
        }
        match read_capped(path) {
            Ok(text) => {
                self.stack.push(canon);
                let items = self.parse(&text, &Rc::from(shown), depth);
                out.extend(items);
                self.stack.pop();
            }
            Err(e) => self.rep.refuse(&from.at, format!("include {shown}: {e}")),
        }
    }
}

/// Sorted like nginx's glob; as with POSIX glob, a leading dot must be matched explicitly.
pub(super) fn glob(dir: &Path, pat: &str) -> Result<Vec<PathBuf>, String> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e.to_string()),
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| wildcard(pat, n) && (pat.starts_with('.') || !n.starts_with('.')))
        .collect();
    names.sort();
    Ok(names.into_iter().map(|n| dir.join(n)).collect())
}

/// Backtracks only to the last `*`, so a pattern like `*a*a*a*b` cannot blow up exponentially.
pub(super) fn wildcard(pat: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pat.chars().collect(), name.chars().collect());
    let (mut i, mut j, mut star, mut mark) = (0, 0, None, 0);
    while j < n.len() {
        if i < p.len() && (p[i] == '?' || p[i] == n[j]) {
            i += 1;
            j += 1;
        } else if i < p.len() && p[i] == '*' {
            star = Some(i);
            mark = j;
            i += 1;
        } else if let Some(s) = star {
            i = s + 1;
            mark += 1;
            j = mark;
        } else {
            return false;
        }
    }
    p[i..].iter().all(|&c| c == '*')
}
