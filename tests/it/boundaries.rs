//! The module boundaries ARCHITECTURE.md draws, checked against the code: its code-map table
//! says which of the crate's modules each module may import, and every `crate::x` a
//! module's files name must be in its row. A module without a row fails too, so the table
//! cannot fall behind the code.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

/// The crate's top-level modules: `src/*.rs` and `src/*/` (the binary and the crate root
/// apart).
fn modules(src: &Path) -> BTreeSet<String> {
    fs::read_dir(src)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter_map(|path| {
            let name = path.file_stem()?.to_str()?.to_owned();
            let is_module = path.is_dir() || path.extension().is_some_and(|ext| ext == "rs");
            (is_module && name != "lib" && name != "main").then_some(name)
        })
        .collect()
}

/// Every `.rs` file of `module`: `src/module.rs` and everything under `src/module/`.
fn files_of(src: &Path, module: &str) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let single = src.join(format!("{module}.rs"));
    if single.exists() {
        files.push(single);
    }
    let mut dirs = vec![src.join(module)];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for path in entries.map(|entry| entry.unwrap().path()) {
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                files.push(path);
            }
        }
    }
    files
}

/// The crate modules `code` names: `crate::x` paths, and the first segment of every item
/// of a `crate::{...}` group. Comments are skipped (doc links are not imports).
fn named_modules(code: &str) -> BTreeSet<String> {
    let code: String = code
        .lines()
        .map(|line| line.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let mut named = BTreeSet::new();
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // Top-level items of the group: split on commas outside nested braces.
            let mut depth = 0;
            let mut item = String::new();
            for ch in group.chars() {
                match ch {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        named.insert(first_segment(&item));
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                item.push(ch);
            }
            named.insert(first_segment(&item));
        } else {
            named.insert(first_segment(rest));
        }
    }
    named.remove("");
    named
}

fn first_segment(path: &str) -> String {
    path.trim()
        .chars()
        .take_while(|ch| ch.is_ascii_alphanumeric() || *ch == '_')
        .collect()
}

/// ARCHITECTURE.md's code map: module -> the modules its row allows (`None`: everyone).
fn allowed(
    architecture: &str,
    modules: &BTreeSet<String>,
) -> BTreeMap<String, Option<BTreeSet<String>>> {
    let mut rows = BTreeMap::new();
    let table = architecture
        .split_once("| module | owns | may import (from this crate) |")
        .expect("ARCHITECTURE.md has the code-map table")
        .1;
    for line in table.lines().skip(2) {
        if !line.starts_with("| `") {
            break;
        }
        let module = first_segment(&line[3..]);
        let cells: Vec<&str> = line.trim_end_matches('|').rsplitn(2, '|').collect();
        let last = cells[0].trim();
        let names: BTreeSet<String> = last
            .split('`')
            .skip(1)
            .step_by(2)
            .filter(|name| modules.contains(*name))
            .map(str::to_owned)
            .collect();
        let entry = if last == "everyone" {
            None
        } else {
            Some(names)
        };
        rows.insert(module, entry);
    }
    rows
}

#[test]
fn every_module_imports_only_what_architecture_md_allows() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let src = root.join("src");
    let modules = modules(&src);
    let architecture = fs::read_to_string(root.join("ARCHITECTURE.md")).unwrap();
    let allowed = allowed(&architecture, &modules);
    let mut broken = Vec::new();
    for module in &modules {
        let Some(rule) = allowed.get(module) else {
            broken.push(format!(
                "`{module}` has no row in ARCHITECTURE.md's code map"
            ));
            continue;
        };
        let Some(rule) = rule else { continue };
        for file in files_of(&src, module) {
            let code = fs::read_to_string(&file).unwrap();
            for named in named_modules(&code) {
                if named != *module && modules.contains(&named) && !rule.contains(&named) {
                    broken.push(format!(
                        "{} imports `{named}`, which `{module}`'s row does not allow",
                        file.strip_prefix(root).unwrap().display()
                    ));
                }
            }
        }
    }
    assert!(
        broken.is_empty(),
        "module boundaries broken (fix the import, or ARCHITECTURE.md if the design changed):\n{}",
        broken.join("\n")
    );
}

#[test]
fn the_boundary_check_sees_imports_and_groups() {
    let named = named_modules(
        "use crate::{\n    hub::{A, B},\n    protocol,\n};\n// crate::control in a comment\nlet x = crate::telemetry::metrics();",
    );
    let expected: BTreeSet<String> = ["hub", "protocol", "telemetry"]
        .into_iter()
        .map(str::to_owned)
        .collect();
    assert_eq!(named, expected);
    let modules: BTreeSet<String> = ["hub", "config", "app"]
        .into_iter()
        .map(str::to_owned)
        .collect();
    let table = "| module | owns | may import (from this crate) |\n|---|---|---|\n\
                 | `hub` | things | `config` (only `Wire`) |\n| `app` | all | everyone |\n\n";
    let rows = allowed(table, &modules);
    assert_eq!(
        rows["hub"],
        Some(["config".to_owned()].into_iter().collect())
    );
    assert_eq!(rows["app"], None);
}
