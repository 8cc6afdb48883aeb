//! Repository checks that are not tests.
//!
//! `cargo run -p xtask -- cycles` fails when any crate of the workspace has an import cycle:
//! module A names module B (through `crate::…`, `super::…`, `self::…` or a child's name) while B
//! names A, directly or through other modules. A module that re-exports an item (`pub use`) is
//! not where the item lives: a path through a re-export counts as an edge to the module that
//! defines it. The crate root (`lib.rs`, `main.rs`) declares and re-exports; edges to it are
//! not counted. Doc comments, comments and `#[cfg(test)] mod tests` blocks are not imports.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("cycles") => {
            let root = workspace_root();
            let mut failed = false;
            let mut checked = 0;
            for src in crate_sources(&root) {
                checked += 1;
                let modules = load_modules(&src);
                for cycle in cycles(&modules) {
                    failed = true;
                    let name = src.parent().unwrap_or(&src).display();
                    println!("import cycle in {name}: {}", cycle.join(" -> "));
                }
            }
            if failed {
                ExitCode::FAILURE
            } else {
                println!("no import cycle in {checked} crates");
                ExitCode::SUCCESS
            }
        }
        _ => {
            eprintln!("usage: cargo run -p xtask -- cycles");
            ExitCode::from(2)
        }
    }
}

fn workspace_root() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.ancestors()
        .nth(2)
        .map_or(here.clone(), Path::to_path_buf)
}

/// Every `crates/*/src` directory.
fn crate_sources(root: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(root.join("crates"))
        .map(|d| d.flatten().map(|e| e.path().join("src")).collect())
        .unwrap_or_default();
    out.retain(|p| p.is_dir());
    out.sort();
    out
}

/// A module: its path (`a::b`, the root is empty), its source without comments and tests.
struct Module {
    path: Vec<String>,
    text: String,
}

fn load_modules(src: &Path) -> Vec<Module> {
    let mut files = Vec::new();
    walk(src, &mut files);
    files.sort();
    files
        .into_iter()
        .filter_map(|file| {
            let rel = file.strip_prefix(src).ok()?;
            let mut path: Vec<String> = rel
                .with_extension("")
                .iter()
                .map(|c| c.to_string_lossy().into_owned())
                .collect();
            if matches!(
                path.last().map(String::as_str),
                Some("mod" | "lib" | "main")
            ) {
                path.pop();
            }
            if path.first().is_some_and(|p| p == "bin") {
                return None; // separate binaries: not modules of this crate
            }
            let text = std::fs::read_to_string(&file).ok()?;
            Some(Module {
                path,
                text: strip(&text),
            })
        })
        .collect()
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            walk(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The source without comments, string-free enough for path matching, and without the
/// `#[cfg(test)]` module at the end of a file (a test module names its parent by design).
fn strip(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let code = line.trim_start();
        if code.starts_with("#[cfg(test)]") {
            break;
        }
        if code.starts_with("//") {
            continue;
        }
        out.push_str(line.split(" //").next().unwrap_or(line));
        out.push('\n');
    }
    // `pub(in crate::a)` is a visibility, not a path to `a`.
    while let Some(start) = out.find("pub(in ") {
        let end = out[start..].find(')').map_or(out.len(), |i| start + i + 1);
        out.replace_range(start..end, "pub");
    }
    out
}

/// Every path the module names that starts at `crate`, `super` or `self`, or at one of its
/// declared child modules, expanded out of `{…}` groups, as absolute module paths.
fn named_paths(module: &Module, children: &BTreeSet<String>) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let text = &module.text;
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let starts_word = i == 0 || !is_ident(bytes[i - 1]) && bytes[i - 1] != b':';
        if starts_word && is_ident(bytes[i]) {
            let (path_text, end) = read_path(text, i);
            i = end;
            // A bare `super` or `crate` is a visibility (`pub(super)`), not a path.
            let Some((first, _)) = path_text.split_once("::") else {
                continue;
            };
            let base: Option<Vec<String>> = match first {
                "crate" => Some(Vec::new()),
                "self" => Some(module.path.clone()),
                "super" => Some(module.path.clone()),
                name if children.contains(name) => Some(module.path.clone()),
                _ => None,
            };
            let Some(base) = base else { continue };
            for expanded in expand(&path_text) {
                let mut abs = base.clone();
                let mut parts = expanded.split("::").peekable();
                if first == "crate" || first == "self" {
                    parts.next();
                }
                for part in parts {
                    match part {
                        "super" => {
                            abs.pop();
                        }
                        "" | "*" | "self" => {}
                        p => abs.push(p.to_owned()),
                    }
                }
                out.push(abs);
            }
        } else {
            i += 1;
        }
    }
    out
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// Reads `a::b::{c, d::e}` from `start`; returns it without spaces and where it ends.
fn read_path(text: &str, start: usize) -> (String, usize) {
    let bytes = text.as_bytes();
    let mut i = start;
    let mut depth = 0;
    let mut out = String::new();
    while i < bytes.len() {
        let b = bytes[i];
        if is_ident(b) || b == b':' || b == b'*' {
            out.push(char::from(b));
        } else if b == b'{' && out.ends_with("::") {
            depth += 1;
            out.push('{');
        } else if b == b'}' && depth > 0 {
            depth -= 1;
            out.push('}');
        } else if (b == b',' || b.is_ascii_whitespace()) && depth > 0 {
            if b == b',' {
                out.push(',');
            }
        } else {
            break;
        }
        i += 1;
    }
    (out.trim_end_matches(':').to_owned(), i.max(start + 1))
}

/// `a::{b, c::{d, e}}` → `a::b`, `a::c::d`, `a::c::e`.
fn expand(path: &str) -> Vec<String> {
    let Some(open) = path.find('{') else {
        return vec![path.to_owned()];
    };
    let prefix = &path[..open];
    let inner = path[open + 1..]
        .strip_suffix('}')
        .unwrap_or(&path[open + 1..]);
    let mut parts = Vec::new();
    let (mut depth, mut last) = (0, 0);
    for (k, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&inner[last..k]);
                last = k + 1;
            }
            _ => {}
        }
    }
    parts.push(&inner[last..]);
    parts
        .into_iter()
        .filter(|p| !p.is_empty())
        .flat_map(|p| expand(&format!("{prefix}{p}")))
        .collect()
}

/// The longest known module at the start of `path`, following re-exports.
fn resolve(
    path: &[String],
    known: &BTreeSet<Vec<String>>,
    reexports: &BTreeMap<(Vec<String>, String), Vec<String>>,
) -> Option<Vec<String>> {
    for len in (1..=path.len()).rev() {
        let prefix = &path[..len];
        if known.contains(prefix) {
            // `module::Item` where `module` re-exports `Item` from elsewhere.
            if let Some(item) = path.get(len)
                && let Some(target) = reexports.get(&(prefix.to_vec(), item.clone()))
            {
                return Some(target.clone());
            }
            return Some(prefix.to_vec());
        }
    }
    None
}

/// The import cycles among `modules`, each as the modules around it.
fn cycles(modules: &[Module]) -> Vec<Vec<String>> {
    let known: BTreeSet<Vec<String>> = modules.iter().map(|m| m.path.clone()).collect();
    let children_of = |m: &Module| -> BTreeSet<String> {
        known
            .iter()
            .filter(|k| k.len() == m.path.len() + 1 && k.starts_with(&m.path))
            .filter_map(|k| k.last().cloned())
            .collect()
    };
    // `pub use` re-exports: (module, item) → the module the item comes from.
    let mut reexports = BTreeMap::new();
    for m in modules {
        for line in m.text.split(';').map(str::trim_start) {
            let Some(rest) = line
                .strip_prefix("pub use ")
                .or_else(|| line.strip_prefix("pub(crate) use "))
            else {
                continue;
            };
            let single = Module {
                path: m.path.clone(),
                text: rest.to_owned(),
            };
            for target in named_paths(&single, &children_of(m)) {
                let (Some(item), Some(from)) = (
                    target.last().cloned(),
                    resolve(
                        &target[..target.len().saturating_sub(1)],
                        &known,
                        &BTreeMap::new(),
                    ),
                ) else {
                    continue;
                };
                reexports.insert((m.path.clone(), item), from);
            }
        }
    }
    let mut edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for m in modules {
        let targets = edges.entry(m.path.clone()).or_default();
        if m.path.is_empty() {
            continue; // the root declares and re-exports
        }
        for path in named_paths(m, &children_of(m)) {
            if let Some(target) = resolve(&path, &known, &reexports)
                && !target.is_empty()
                && target != m.path
            {
                if std::env::var_os("XTASK_DEBUG").is_some() {
                    eprintln!(
                        "{} -> {} ({})",
                        m.path.join("::"),
                        target.join("::"),
                        path.join("::")
                    );
                }
                targets.insert(target);
            }
        }
    }
    strongly_connected(&edges)
        .into_iter()
        .filter(|c| c.len() > 1)
        .map(|c| c.iter().map(|p| p.join("::")).collect())
        .collect()
}

/// Tarjan's strongly connected components.
fn strongly_connected(
    edges: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
) -> Vec<Vec<Vec<String>>> {
    struct State<'a> {
        edges: &'a BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        index: BTreeMap<&'a Vec<String>, usize>,
        low: BTreeMap<&'a Vec<String>, usize>,
        stack: Vec<&'a Vec<String>>,
        on_stack: BTreeSet<&'a Vec<String>>,
        out: Vec<Vec<Vec<String>>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a Vec<String>) {
        let n = s.index.len();
        s.index.insert(v, n);
        s.low.insert(v, n);
        s.stack.push(v);
        s.on_stack.insert(v);
        if let Some(targets) = s.edges.get(v) {
            for w in targets {
                let Some((w, _)) = s.edges.get_key_value(w) else {
                    continue;
                };
                if !s.index.contains_key(w) {
                    visit(s, w);
                    let low = s.low[w].min(s.low[v]);
                    s.low.insert(v, low);
                } else if s.on_stack.contains(w) {
                    let low = s.index[w].min(s.low[v]);
                    s.low.insert(v, low);
                }
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                component.push(w.clone());
                if w == v {
                    break;
                }
            }
            s.out.push(component);
        }
    }
    let mut s = State {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in edges.keys() {
        if !s.index.contains_key(v) {
            visit(&mut s, v);
        }
    }
    s.out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn module(path: &str, text: &str) -> Module {
        Module {
            path: path
                .split("::")
                .filter(|p| !p.is_empty())
                .map(str::to_owned)
                .collect(),
            text: strip(text),
        }
    }

    #[test]
    fn finds_a_cycle_through_crate_super_and_child_paths() {
        let modules = [
            module("", "pub mod a; pub mod b;"),
            module("a", "use crate::b::{Thing, other::Deep};"),
            module("b", "mod other; fn f() { other::g(); }"),
            module("b::other", "use super::super::a::X;"),
        ];
        let found = cycles(&modules);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].len(), 3, "{found:?}");
    }

    #[test]
    fn re_exports_comments_and_tests_make_no_edges() {
        let modules = [
            module("", "pub mod a; pub mod b;"),
            // `b` re-exports `Leaf` from `b::leaf`: naming `crate::b::Leaf` is an edge to the leaf.
            module(
                "a",
                "use crate::b::Leaf; // crate::b::Other\n/// [`crate::b::Doc`]",
            ),
            module("b", "mod leaf; pub use leaf::Leaf;\nuse crate::a::Y;"),
            module(
                "b::leaf",
                // A visibility names `a` without importing it.
                "pub(in crate::a) struct Leaf;\n#[cfg(test)]\nmod tests { use crate::a::Z; }",
            ),
        ];
        assert!(cycles(&modules).is_empty());
    }
}
