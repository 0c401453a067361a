//! The library's import graph has no cycles: neither between its top-level modules (`layers`
//! never reaches into `models`, `checkpoint` never into `train`, …) nor between the files of one
//! module. A cycle means two concepts that cannot be understood, tested or moved apart; this test
//! keeps one from creeping back in.
//!
//! It reads the sources: every `crate::…` and `super::…` path (including `use …::{a, b}` groups)
//! outside comments and `#[cfg(test)]` code, resolved to the file that defines it. A file's
//! references to its own ancestors (`super::` items of a `mod.rs`) are the module tree itself, not
//! imports, and are left out. The binary (`main.rs`, `cli/`) sits on top and is not checked.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A source file's module path: `src/layers/linear.rs` → ["layers", "linear"].
fn module_path(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).expect("file under src");
    let mut parts: Vec<String> = rel
        .with_extension("")
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
        parts.pop();
    }
    parts
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("readable src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a file that the library compiles outside tests, without comment lines.
fn library_code(text: &str) -> String {
    let code = text.split("#[cfg(test)]").next().unwrap_or("");
    code.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Every path written after `root::` in `code`, as segments; a `{a, b::c}` group yields one path
/// per member.
fn paths_after(code: &str, root: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let needle = format!("{root}::");
    let mut from = 0;
    while let Some(i) = code[from..].find(&needle) {
        let start = from + i;
        from = start + needle.len();
        if code[..start].chars().next_back().is_some_and(is_ident) {
            continue; // e.g. `my_crate::`
        }
        let mut prefix = Vec::new();
        let mut rest = &code[from..];
        loop {
            let len = rest.find(|c: char| !is_ident(c)).unwrap_or(rest.len());
            if len > 0 {
                prefix.push(rest[..len].to_string());
                rest = &rest[len..];
            }
            if let Some(r) = rest.strip_prefix("::") {
                rest = r;
                if let Some(group) = rest.strip_prefix('{') {
                    let body = &group[..group.find('}').unwrap_or(group.len())];
                    for member in body.split(',') {
                        let mut p = prefix.clone();
                        p.extend(
                            member
                                .trim()
                                .split("::")
                                .map(|s| s.trim().to_string())
                                .take_while(|s| !s.is_empty() && s.chars().all(is_ident)),
                        );
                        out.push(p);
                    }
                    break;
                }
                continue;
            }
            out.push(prefix);
            break;
        }
    }
    out
}

/// File-level import edges of the library, keyed by module path.
fn import_graph() -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let modules: BTreeMap<Vec<String>, PathBuf> = files
        .into_iter()
        .map(|f| (module_path(&src, &f), f))
        .collect();
    let mut graph = BTreeMap::new();
    for (me, file) in &modules {
        if me.first().is_some_and(|m| m == "main" || m == "cli") {
            continue;
        }
        let code = library_code(&std::fs::read_to_string(file).expect("readable source"));
        let parent = me[..me.len().saturating_sub(1)].to_vec();
        let mut edges = BTreeSet::new();
        for (root, base) in [("crate", Vec::new()), ("super", parent)] {
            for path in paths_after(&code, root) {
                let full: Vec<String> = base.iter().cloned().chain(path).collect();
                // The longest prefix that is a file is the module that defines the item.
                let Some(target) = (1..=full.len())
                    .rev()
                    .map(|n| full[..n].to_vec())
                    .find(|p| modules.contains_key(p))
                else {
                    continue;
                };
                if target != *me && !me.starts_with(&target) {
                    edges.insert(target);
                }
            }
        }
        graph.insert(me.clone(), edges);
    }
    graph
}

/// One cycle of `graph`, as the list of its nodes, if there is any.
fn find_cycle<N: Ord + Clone>(graph: &BTreeMap<N, BTreeSet<N>>) -> Option<Vec<N>> {
    fn visit<N: Ord + Clone>(
        n: &N,
        graph: &BTreeMap<N, BTreeSet<N>>,
        state: &mut BTreeMap<N, bool>, // false: on the stack, true: done
        stack: &mut Vec<N>,
    ) -> Option<Vec<N>> {
        state.insert(n.clone(), false);
        stack.push(n.clone());
        for m in graph.get(n).into_iter().flatten() {
            match state.get(m) {
                Some(false) => {
                    let at = stack.iter().position(|s| s == m).unwrap_or(0);
                    let mut cycle = stack[at..].to_vec();
                    cycle.push(m.clone());
                    return Some(cycle);
                }
                Some(true) => {}
                None => {
                    if let Some(c) = visit(m, graph, state, stack) {
                        return Some(c);
                    }
                }
            }
        }
        stack.pop();
        state.insert(n.clone(), true);
        None
    }
    let mut state = BTreeMap::new();
    for n in graph.keys() {
        if !state.contains_key(n) {
            if let Some(c) = visit(n, graph, &mut state, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

#[test]
fn no_file_imports_itself_through_a_cycle() {
    let graph = import_graph();
    assert!(graph.len() > 50, "only {} library files found", graph.len());
    if let Some(cycle) = find_cycle(&graph) {
        let names: Vec<String> = cycle.iter().map(|p| p.join("::")).collect();
        panic!("import cycle between files: {}", names.join(" → "));
    }
}

/// The library returns typed errors (thiserror) that callers can match on; `anyhow`, which erases
/// the type, belongs to the binary. So no library file outside tests names it.
#[test]
fn the_library_returns_typed_errors() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut offenders = Vec::new();
    for file in files {
        let me = module_path(&src, &file);
        if me.first().is_some_and(|m| m == "main" || m == "cli") {
            continue;
        }
        let code = library_code(&std::fs::read_to_string(&file).expect("readable source"));
        if code.contains("anyhow") {
            offenders.push(me.join("::"));
        }
    }
    assert!(
        offenders.is_empty(),
        "library modules using anyhow instead of a typed error: {offenders:?}"
    );
}

#[test]
fn top_level_modules_form_a_hierarchy() {
    let mut top: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (from, tos) in import_graph() {
        let Some(a) = from.first() else { continue };
        for to in tos {
            if let Some(b) = to.first().filter(|b| *b != a) {
                top.entry(a.clone()).or_default().insert(b.clone());
            }
        }
    }
    // The graph is not empty: the parse found the imports that certainly exist.
    assert!(
        top.get("train").is_some_and(|t| t.contains("models")),
        "{top:?}"
    );
    if let Some(cycle) = find_cycle(&top) {
        panic!("import cycle between modules: {}", cycle.join(" → "));
    }
}

#[test]
fn the_parser_sees_paths_groups_and_ignores_comments_and_tests() {
    let code = library_code(
        "use crate::layers::{gelu, linear::Epilogue};\n// crate::train::x\nfn f() { super::a::b(); my_crate::z(); }\n#[cfg(test)]\nuse crate::sweep;",
    );
    let crate_paths = paths_after(&code, "crate");
    assert_eq!(
        crate_paths,
        vec![
            vec!["layers".to_string(), "gelu".into()],
            vec!["layers".into(), "linear".into(), "Epilogue".into()],
        ]
    );
    assert_eq!(
        paths_after(&code, "super"),
        vec![vec!["a".to_string(), "b".into()]]
    );
    let cyclic = BTreeMap::from([(1, BTreeSet::from([2])), (2, BTreeSet::from([1]))]);
    assert_eq!(find_cycle(&cyclic), Some(vec![1, 2, 1]));
    let acyclic = BTreeMap::from([(1, BTreeSet::from([2])), (2, BTreeSet::new())]);
    assert_eq!(find_cycle(&acyclic), None);
}
