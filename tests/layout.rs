//! The layout the README and `lib.rs` describe, checked on the source:
//! every import between the crate's top-level parts points down the list
//! of layers, no two files import each other (directly or round a
//! circle), every `//!` opener and the `lib.rs` map name only modules that
//! exist, and no function is longer than 80 lines unless it is a flat
//! table (it is named in `LONG_TABLES`).
//!
//! `cargo test --test layout -- --nocapture` prints the arrows between the
//! parts and the module list, as the issue notes quote them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The top-level parts, from the face down. A part may import the parts
/// after it, never one before it.
const LAYERS: &[&[&str]] = &[
    &["main", "cli"],
    &["daemon"],
    &["client"],
    &["lifecycle"],
    &["store"],
    &["keys"],
    &["protocol", "config", "clock", "snapshot"],
    &["error"],
];

/// Functions over 80 lines that are flat tables (one arm or one entry per
/// line, no logic between), by `file: fn name`.
const LONG_TABLES: &[&str] = &[];

const MAX_FN_LINES: usize = 80;

struct Source {
    /// `daemon::handler::sign`, `lib` for `src/lib.rs`.
    module: Vec<String>,
    path: PathBuf,
    text: String,
}

fn sources() -> Vec<Source> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    walk(&src, &mut files);
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let rel = path.strip_prefix(&src).unwrap().with_extension("");
            let mut module: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if module.last().is_some_and(|m| m == "mod") && module.len() > 1 {
                module.pop();
            }
            let text = std::fs::read_to_string(&path).unwrap();
            Source { module, path, text }
        })
        .collect()
}

/// The code of a file without comments and string literals (so that a
/// path in a doc comment or a message is not an import).
fn code_of(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            i += 2;
            while i < b.len() && !b[i..].starts_with(b"*/") {
                i += 1;
            }
            i += 2;
        } else if b[i] == b'"'
            || (b[i] == b'r' && (b.get(i + 1) == Some(&b'"') || b.get(i + 1) == Some(&b'#')))
        {
            // A string, raw or not.
            if b[i] == b'r' {
                let mut hashes = 0;
                i += 1;
                while b[i] == b'#' {
                    hashes += 1;
                    i += 1;
                }
                if b[i] != b'"' {
                    out.push('r');
                    continue;
                }
                i += 1;
                let end = format!("\"{}", "#".repeat(hashes));
                while i < b.len() && !b[i..].starts_with(end.as_bytes()) {
                    i += 1;
                }
                i += end.len();
            } else {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    if b[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
                i += 1;
            }
            out.push_str("\"\"");
        } else if b[i] == b'\'' && b.get(i + 2) == Some(&b'\'') {
            // A char literal such as '"'.
            out.push_str("' '");
            i += 3;
        } else if b[i] == b'\'' && b.get(i + 1) == Some(&b'\\') {
            i += 2;
            while i < b.len() && b[i] != b'\'' {
                i += 1;
            }
            i += 1;
            out.push_str("' '");
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out
}

/// Every path the code names from `crate::` or `super::`, braces of `use`
/// expanded, as the module it resolves to (the longest prefix that is a
/// module).
fn imports(src: &Source, modules: &BTreeSet<Vec<String>>) -> BTreeSet<Vec<String>> {
    let code = code_of(&src.text);
    let mut paths = Vec::new();
    // `use` statements, braces expanded; `pub use` re-exports count too.
    for (start, _) in code.match_indices("use ") {
        let before = code[..start].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let Some(end) = code[start..].find(';') else {
            continue;
        };
        let body = code[start + 4..start + end]
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .replace(" :: ", "::")
            .replace(":: ", "::")
            .replace(" ::", "::")
            .replace("{ ", "{")
            .replace(" }", "}")
            .replace(", ", ",");
        expand(&body, &mut paths);
    }
    // Paths written out in the code.
    for word in code.split(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':')) {
        if word.starts_with("crate::") || word.starts_with("super::") {
            paths.push(word.trim_end_matches(':').to_owned());
        }
    }
    // Where `super` starts: the file's own module (`lib` and `main` are
    // the crate root).
    let own: Vec<String> = if src.module == ["lib"] || src.module == ["main"] {
        Vec::new()
    } else {
        src.module.clone()
    };
    let mut found = BTreeSet::new();
    for p in paths {
        let mut parts: Vec<&str> = p.split("::").collect();
        let mut at: Vec<String> = match parts.first() {
            Some(&"crate") => {
                parts.remove(0);
                Vec::new()
            }
            Some(&"super") => {
                let mut at = own.clone();
                while parts.first() == Some(&"super") {
                    parts.remove(0);
                    at.pop();
                }
                at
            }
            _ => continue,
        };
        let base = at.clone();
        let mut best = None;
        for part in parts {
            at.push(part.to_owned());
            if modules.contains(&at) {
                best = Some(at.clone());
            }
        }
        if let Some(m) = best.or(if base.is_empty() { None } else { Some(base) })
            && m != src.module
        {
            found.insert(m);
        }
    }
    found
}

/// `a::{b, c::{d, e}}` → `a::b`, `a::c::d`, `a::c::e`.
fn expand(body: &str, out: &mut Vec<String>) {
    let Some(open) = body.find('{') else {
        out.push(body.split(" as ").next().unwrap_or(body).to_owned());
        return;
    };
    let prefix = &body[..open];
    let inner = &body[open + 1..body.rfind('}').unwrap_or(body.len())];
    let mut depth = 0;
    let mut from = 0;
    let mut items = Vec::new();
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&inner[from..i]);
                from = i + 1;
            }
            _ => {}
        }
    }
    items.push(&inner[from..]);
    for item in items {
        if item.is_empty() {
            continue;
        }
        if item == "self" {
            out.push(prefix.trim_end_matches("::").to_owned());
        } else {
            expand(&format!("{prefix}{item}"), out);
        }
    }
}

fn layer_of(top: &str) -> usize {
    LAYERS
        .iter()
        .position(|l| l.contains(&top))
        .unwrap_or_else(|| panic!("{top} is in no layer of tests/layout.rs"))
}

struct Graph {
    sources: Vec<Source>,
    /// file module → the modules it imports.
    edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
}

fn graph() -> Graph {
    let sources = sources();
    let modules: BTreeSet<Vec<String>> = sources.iter().map(|s| s.module.clone()).collect();
    let edges = sources
        .iter()
        .map(|s| (s.module.clone(), imports(s, &modules)))
        .collect();
    Graph { sources, edges }
}

fn name(m: &[String]) -> String {
    m.join("::")
}

#[test]
fn imports_between_parts_point_down() {
    let g = graph();
    let mut arrows: BTreeMap<(String, String), usize> = BTreeMap::new();
    let mut upward = Vec::new();
    for (from, tos) in &g.edges {
        for to in tos {
            let (a, b) = (&from[0], &to[0]);
            if a == b || a == "lib" {
                continue;
            }
            *arrows.entry((a.clone(), b.clone())).or_default() += 1;
            if layer_of(a) > layer_of(b) {
                upward.push(format!("{} -> {}", name(from), name(to)));
            }
        }
    }
    println!("imports between the parts (files importing):");
    for ((a, b), n) in &arrows {
        println!("  {a} -> {b} ({n})");
    }
    assert!(
        upward.is_empty(),
        "imports that do not point down {LAYERS:?}:\n{}",
        upward.join("\n")
    );
}

#[test]
fn no_two_files_import_each_other() {
    let g = graph();
    // A parent's `mod`/`pub use` of its children is its map, not a use:
    // only edges between files that are not parent and child count, and a
    // child's import of its parent.
    let parent_of = |a: &Vec<String>, b: &Vec<String>| b.len() == a.len() + 1 && b.starts_with(a);
    let mut adj: BTreeMap<&Vec<String>, Vec<&Vec<String>>> = BTreeMap::new();
    for (from, tos) in &g.edges {
        for to in tos {
            if parent_of(from, to) || from[0] == "lib" {
                continue;
            }
            adj.entry(from).or_default().push(to);
        }
    }
    // Tarjan's strongly connected components.
    struct T<'a> {
        adj: &'a BTreeMap<&'a Vec<String>, Vec<&'a Vec<String>>>,
        index: BTreeMap<&'a Vec<String>, usize>,
        low: BTreeMap<&'a Vec<String>, usize>,
        stack: Vec<&'a Vec<String>>,
        on: BTreeSet<&'a Vec<String>>,
        circles: Vec<Vec<String>>,
    }
    fn visit<'a>(t: &mut T<'a>, v: &'a Vec<String>) {
        let i = t.index.len();
        t.index.insert(v, i);
        t.low.insert(v, i);
        t.stack.push(v);
        t.on.insert(v);
        for &w in t.adj.get(v).map(|x| x.as_slice()).unwrap_or_default() {
            if !t.index.contains_key(w) {
                visit(t, w);
                let l = t.low[w].min(t.low[v]);
                t.low.insert(v, l);
            } else if t.on.contains(w) {
                let l = t.index[w].min(t.low[v]);
                t.low.insert(v, l);
            }
        }
        if t.low[v] == t.index[v] {
            let mut comp = Vec::new();
            loop {
                let w = t.stack.pop().unwrap();
                t.on.remove(w);
                comp.push(name(w));
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.sort();
                t.circles.push(comp);
            }
        }
    }
    let mut t = T {
        adj: &adj,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        circles: Vec::new(),
    };
    for v in g.edges.keys() {
        if !t.index.contains_key(v) {
            visit(&mut t, v);
        }
    }
    assert!(
        t.circles.is_empty(),
        "files that import each other:\n{:#?}",
        t.circles
    );
}

#[test]
fn openers_and_the_map_name_modules_that_exist() {
    let g = graph();
    let names: BTreeSet<String> = g
        .sources
        .iter()
        .flat_map(|s| s.module.last().cloned())
        .chain(g.sources.iter().map(|s| name(&s.module)))
        .collect();
    let mut wrong = Vec::new();
    for s in &g.sources {
        // The first backticked word of the opener names the module itself.
        let opener: Vec<&str> = s
            .text
            .lines()
            .take_while(|l| l.starts_with("//!"))
            .collect();
        if opener.is_empty() {
            wrong.push(format!("{}: no //! opener", s.path.display()));
            continue;
        }
        let first = opener[0];
        if let Some(rest) = first.strip_prefix("//! `") {
            let word = rest.split('`').next().unwrap_or_default();
            let own = s.module.last().unwrap();
            if word != own && !(own == "lib" || own == "main") {
                wrong.push(format!(
                    "{}: the opener calls the module `{word}`",
                    s.path.display()
                ));
            }
        }
    }
    // The lib.rs map lists every top-level module and every file module
    // under it, by name.
    let lib = g.sources.iter().find(|s| s.module == ["lib"]).unwrap();
    let map: String = lib
        .text
        .lines()
        .take_while(|l| l.starts_with("//!"))
        .collect::<Vec<_>>()
        .join("\n");
    for s in &g.sources {
        let m = s.module.last().unwrap();
        if m == "lib" || m == "main" || m == "tests" {
            continue;
        }
        if !map.contains(&format!("`{m}`")) && !map.contains(&format!("[`{m}`]")) {
            wrong.push(format!("lib.rs map: {} is not named", name(&s.module)));
        }
    }
    for word in map.split('`').skip(1).step_by(2) {
        let word = word.trim_start_matches('[').trim_end_matches(']');
        let word = word.split("::").last().unwrap_or(word);
        let looks_like_module = word
            .chars()
            .all(|c| c.is_ascii_lowercase() || c == '_' || c.is_ascii_digit())
            && !word.is_empty();
        if looks_like_module && !names.contains(word) && !MAP_WORDS.contains(&word) {
            wrong.push(format!("lib.rs map: `{word}` is not a module"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    println!("modules:");
    for s in &g.sources {
        println!("  {}", name(&s.module));
    }
}

/// Words the `lib.rs` map puts in backticks that are not module names
/// (commands, ops, settings).
const MAP_WORDS: &[&str] = &[
    "serve", "sign", "verify", "status", "jwks", "admin", "reload", "sharks",
];

#[test]
fn no_function_is_longer_than_80_lines_but_flat_tables() {
    let g = graph();
    let mut long = Vec::new();
    for s in &g.sources {
        let lines: Vec<&str> = s.text.lines().collect();
        let mut i = 0;
        while i < lines.len() {
            let l = lines[i].trim_start();
            let is_fn = (l.starts_with("fn ")
                || l.starts_with("pub fn ")
                || l.starts_with("pub(crate) fn ")
                || l.starts_with("pub(super) fn ")
                || l.starts_with("async fn ")
                || l.starts_with("pub async fn ")
                || l.starts_with("pub(crate) async fn ")
                || l.starts_with("pub(super) async fn "))
                && !l.ends_with(';');
            if !is_fn {
                i += 1;
                continue;
            }
            let indent = lines[i].len() - l.len();
            let fn_name = l
                .split("fn ")
                .nth(1)
                .and_then(|r| r.split(['(', '<']).next())
                .unwrap_or("?")
                .to_owned();
            // The body ends at the first `}` at the fn's own indent.
            let start = i;
            let mut j = i + 1;
            while j < lines.len() {
                let t = lines[j];
                if t.len() > indent && t[..indent].trim().is_empty() && t[indent..].starts_with('}')
                {
                    break;
                }
                if l.ends_with('}') {
                    break;
                }
                j += 1;
            }
            let n = j - start + 1;
            let key = format!(
                "{}: {fn_name}",
                s.path.file_name().unwrap().to_string_lossy()
            );
            let in_tests = s.text[..s
                .text
                .lines()
                .take(start)
                .map(|l| l.len() + 1)
                .sum::<usize>()]
                .contains("#[cfg(test)]");
            if n > MAX_FN_LINES && !LONG_TABLES.contains(&key.as_str()) && !in_tests {
                long.push(format!("{} ({n} lines)", name(&s.module) + "::" + &fn_name));
            }
            i = j + 1;
        }
    }
    assert!(
        long.is_empty(),
        "functions over {MAX_FN_LINES} lines:\n{}",
        long.join("\n")
    );
}
