//! The crate's layout stays a layered one: no import cycle between the top-level modules of
//! `src/` (read from the `crate::…` paths each module's files use), and the binary holds no
//! loop. A newcomer can then read the crate bottom-up (`src/lib.rs`, "Layout").

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::Path,
};

/// The top-level module a file of `src/` belongs to.
fn module_of(path: &Path, src: &Path) -> Option<String> {
    let rel = path.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    let name = first.trim_end_matches(".rs");
    (name != "lib" && name != "main").then(|| name.to_string())
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The text without its comment lines (doc comments name other modules in links).
fn code_only(text: &str) -> String {
    text.lines().filter(|l| !l.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n")
}

/// Every `crate::<module>` a text names, including `use crate::{a, b::c}` groups.
fn crate_paths(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for (at, _) in text.match_indices("crate::") {
        let rest = &text[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // Top-level names of the group: split at commas outside nested braces.
            let mut depth = 0;
            let mut name = String::new();
            let mut expecting_name = true;
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        if !name.is_empty() {
                            found.insert(std::mem::take(&mut name));
                        }
                        expecting_name = true;
                    }
                    c if depth == 0 && expecting_name && (c.is_alphanumeric() || c == '_') => name.push(c),
                    c if depth == 0 && !name.is_empty() && !(c.is_alphanumeric() || c == '_') => {
                        found.insert(std::mem::take(&mut name));
                        expecting_name = false;
                    }
                    _ => {}
                }
            }
            if !name.is_empty() {
                found.insert(name);
            }
        } else {
            let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            if !name.is_empty() {
                found.insert(name);
            }
        }
    }
    found
}

#[test]
fn the_modules_of_src_import_each_other_without_a_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in &files {
        let Some(module) = module_of(file, &src) else { continue };
        let text = code_only(&fs::read_to_string(file).unwrap());
        let deps = graph.entry(module.clone()).or_default();
        for dep in crate_paths(&text) {
            if dep != module && dep != "workers" {
                deps.insert(dep);
            }
        }
    }
    assert!(graph.len() > 5, "found the modules of src/: {graph:?}");
    // Depth-first search for a back edge.
    fn visit(node: &str, graph: &BTreeMap<String, BTreeSet<String>>, path: &mut Vec<String>, done: &mut BTreeSet<String>) {
        if done.contains(node) {
            return;
        }
        if let Some(at) = path.iter().position(|n| n == node) {
            panic!("import cycle in src/: {} -> {node}", path[at..].join(" -> "));
        }
        path.push(node.to_string());
        for dep in graph.get(node).into_iter().flatten() {
            visit(dep, graph, path, done);
        }
        path.pop();
        done.insert(node.to_string());
    }
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        visit(node, &graph, &mut Vec::new(), &mut done);
    }
}

#[test]
fn the_cycle_check_sees_grouped_imports() {
    let found = crate_paths("use crate::{a::{B, C}, d, e::f};\nlet x = crate::g::h();");
    assert_eq!(found, ["a", "d", "e", "g"].into_iter().map(String::from).collect());
}

#[test]
fn the_binary_parses_arguments_and_calls_the_library_without_loops() {
    let main = code_only(&fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/main.rs")).unwrap());
    for line in main.lines().map(str::trim_start) {
        for start in ["loop {", "while ", "for "] {
            assert!(!line.starts_with(start), "src/main.rs holds a loop ({line}): process loops belong in the library (src/process/)");
        }
        assert!(!line.contains("sleep("), "src/main.rs waits ({line}): waits and retries belong in the library");
    }
}

#[test]
fn the_sync_step_does_not_know_the_queue() {
    // A step returns what it left (`sync::Left`); the worker process decides what to enqueue.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = vec![root.join("sync.rs")];
    rust_files(&root.join("pipeline"), &mut files);
    rust_files(&root.join("reindex"), &mut files);
    for file in files {
        let text = code_only(&fs::read_to_string(&file).unwrap());
        for needle in ["workers::", "Queue", ".nudge("] {
            assert!(!text.contains(needle), "{} names {needle}: the step must not know the queue", file.display());
        }
    }
}

#[test]
fn the_workers_crate_takes_a_handler_and_calls_nothing_of_the_core() {
    let text = code_only(&fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("workers/src/lib.rs")).unwrap());
    // No trait for the core to implement (the core hands the worker a closure), so the two
    // crates no longer call each other.
    assert!(!text.contains("pub trait"), "workers/src/lib.rs defines a trait for the core to implement");
    assert!(!text.contains("tidemark::"), "workers/src/lib.rs names the core");
}
