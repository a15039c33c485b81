//! Keeps the layering of docs/ARCHITECTURE.md true: each top-level module of `src/` may import
//! only the modules below it. Reads the sources (outside `#[cfg(test)]` blocks and comments) and
//! collects every `crate::<module>` they name, in paths and in `use crate::{…}` groups.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

/// What each layer may import (besides itself). Anything not listed here may not be imported by
/// the layers below `app`/`cli`.
const ALLOWED: &[(&str, &[&str])] = &[
    ("domain", &[]),
    ("config", &[]),
    ("telemetry", &["config"]),
    ("sync", &[]),
    ("ratelimit", &["sync"]),
    ("systemd", &["config", "telemetry"]),
    ("protocol", &["domain"]),
    ("store", &["config", "domain", "telemetry", "sync"]),
    ("auth", &["config", "domain", "store", "sync", "telemetry"]),
    ("bus", &["config", "domain", "protocol", "sync", "telemetry"]),
    ("chat", &["bus", "config", "domain", "protocol", "ratelimit", "store", "sync", "telemetry"]),
    ("http", &["auth", "chat", "config", "domain", "protocol", "ratelimit", "store", "sync", "telemetry"]),
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).expect("readable source dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of `text` without comments and without its test module.
fn code(text: &str) -> String {
    let text = text.split("#[cfg(test)]").next().unwrap_or_default();
    text.lines().map(|l| l.split("//").next().unwrap_or_default()).collect::<Vec<_>>().join("\n")
}

/// Every module named as `crate::<name>` or at the top level of a `use crate::{…}` group.
fn imports(code: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let ident = |s: &str| s.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect::<String>();
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let (mut depth, mut item) = (1, String::new());
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    _ => {}
                }
                if depth == 0 {
                    break;
                }
                if depth == 1 && c == ',' {
                    found.insert(ident(item.trim()));
                    item.clear();
                } else if depth == 1 {
                    item.push(c);
                }
            }
            found.insert(ident(item.trim()));
        } else {
            found.insert(ident(rest));
        }
    }
    found.remove("");
    found
}

#[test]
fn each_layer_imports_only_the_layers_below_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in &files {
        let rel = file.strip_prefix(&src).expect("under src");
        let module = rel.components().next().and_then(|c| c.as_os_str().to_str()).unwrap_or_default();
        let module = module.trim_end_matches(".rs").to_owned();
        let text = fs::read_to_string(file).expect("readable source");
        let uses = imports(&code(&text));
        graph.entry(module.clone()).or_default().extend(uses.into_iter().filter(|m| *m != module));
    }
    let mut wrong = Vec::new();
    for (layer, allowed) in ALLOWED {
        for used in graph.get(*layer).into_iter().flatten() {
            if !allowed.contains(&used.as_str()) {
                wrong.push(format!("{layer} imports {used}"));
            }
        }
    }
    assert!(wrong.is_empty(), "imports against the layering of docs/ARCHITECTURE.md: {wrong:?}\ngraph: {graph:#?}");
    // The checker sees what it should: the chat core does import the bus and the protocol.
    assert!(graph["chat"].contains("bus") && graph["chat"].contains("protocol"), "{graph:#?}");
}

#[test]
fn the_import_scanner_reads_paths_and_use_groups() {
    let found = imports("use crate::{a::B, c, d::{e, f::{G}}};\nfn x() { crate::h::i(); }");
    assert_eq!(found.into_iter().collect::<Vec<_>>(), ["a", "c", "d", "h"]);
}
