//! The workspace's layout rules, checked on its sources (no services needed):
//! - no crate's modules import each other in a cycle (`a` uses `b`, `b` uses `a`, directly
//!   or around a longer loop), so each crate reads from its leaves up;
//! - no domain crate depends on poem: HTTP lives in `api`.
//!
//! A module's references are the `crate::…` and `super::…` paths of its non-test code
//! (`use` trees included), resolved to the longest module they name.

#![expect(
    unused_crate_dependencies,
    reason = "the package's dependencies serve its other test binary"
)]

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

/// The crates that may depend on poem (the HTTP edge, and the benches that drive it).
const HTTP_CRATES: &[&str] = &["api", "bench", "tests"];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace")
        .to_owned()
}

/// The workspace's members, from its manifest's `members = [...]` line.
fn members() -> Vec<String> {
    let manifest = fs::read_to_string(workspace().join("Cargo.toml")).expect("the manifest");
    let line = manifest
        .lines()
        .find(|line| line.starts_with("members"))
        .expect("a members line");
    line.split('"')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).expect("a readable source directory") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `a::b` for `src/a/b.rs` and `src/a/b/mod.rs`; `crate` for the crate root. `None` for
/// files that are not modules of the library or binary (`src/bin/*`).
fn module_name(src: &Path, file: &Path) -> Option<String> {
    let relative = file.strip_prefix(src).ok()?.with_extension("");
    let mut parts: Vec<String> = relative
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.first().is_some_and(|p| p == "bin") {
        return None;
    }
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    if parts == ["lib"] || parts == ["main"] {
        return Some("crate".to_owned());
    }
    Some(parts.join("::"))
}

/// The source without comments and without the items marked `#[cfg(test)]` (the test
/// module, test-only imports and helpers).
fn code_of(source: &str) -> String {
    let mut code = String::new();
    let mut rest = source;
    while let Some(start) = rest.find("/*") {
        code.push_str(&rest[..start]);
        rest = rest[start..]
            .find("*/")
            .map_or("", |end| &rest[start + end + 2..]);
    }
    code.push_str(rest);
    let code: String = code
        .lines()
        .filter(|line| !line.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    let mut kept = String::new();
    let mut rest = code.as_str();
    while let Some(at) = rest.find("#[cfg(test)]") {
        kept.push_str(&rest[..at]);
        rest = after_item(&rest[at + "#[cfg(test)]".len()..]);
    }
    kept.push_str(rest);
    kept
}

/// What follows the item `source` starts with: after its first `;` outside braces, or
/// after its first balanced `{ … }`.
fn after_item(source: &str) -> &str {
    let mut depth = 0_usize;
    for (i, c) in source.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth <= 1 => return &source[i + 1..],
            '}' => depth -= 1,
            ';' if depth == 0 => return &source[i + 1..],
            _ => {}
        }
    }
    ""
}

fn is_path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// Every path of a `use` tree body (`a::{b, c::{d}}, e as f` → `a::b`, `a::c::d`, `e`).
fn flatten_tree(prefix: &str, tree: &str, out: &mut Vec<String>) {
    let mut depth = 0;
    let mut start = 0;
    let mut items = Vec::new();
    for (i, c) in tree.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&tree[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(&tree[start..]);
    for item in items.into_iter().map(str::trim).filter(|i| !i.is_empty()) {
        match item.split_once('{') {
            Some((head, rest)) => {
                let head = head.trim().trim_end_matches("::");
                let inner = rest.rsplit_once('}').map_or(rest, |(inner, _)| inner);
                flatten_tree(&join(prefix, head), inner, out);
            }
            None => {
                let name = item.split(" as ").next().unwrap_or(item).trim();
                out.push(join(prefix, name));
            }
        }
    }
}

fn join(prefix: &str, name: &str) -> String {
    match (prefix.is_empty(), name.is_empty()) {
        (true, _) => name.to_owned(),
        (_, true) => prefix.to_owned(),
        _ => format!("{prefix}::{name}"),
    }
}

/// The paths `code` reaches through `crate::` (relative to the crate root) and `super::`
/// (resolved against `module`).
fn references(module: &str, code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let parent = match module.rsplit_once("::") {
        Some((parent, _)) => parent.to_owned(),
        None => String::new(),
    };
    let own = if module == "crate" {
        String::new()
    } else {
        module.to_owned()
    };
    for (anchor, base) in [
        ("crate::", String::new()),
        ("super::", parent),
        ("self::", own),
    ] {
        let mut rest = code;
        while let Some(at) = rest.find(anchor) {
            let preceded = rest[..at].chars().next_back().is_some_and(is_path_char);
            rest = &rest[at + anchor.len()..];
            if preceded {
                continue;
            }
            if let Some(tree) = rest.strip_prefix('{') {
                let mut depth = 1;
                let end = tree
                    .char_indices()
                    .find(|&(_, c)| {
                        depth += match c {
                            '{' => 1,
                            '}' => -1,
                            _ => 0,
                        };
                        depth == 0
                    })
                    .map_or(tree.len(), |(i, _)| i);
                flatten_tree(&base, &tree[..end], &mut out);
            } else {
                let end = rest.find(|c| !is_path_char(c)).unwrap_or(rest.len());
                let path = rest[..end].trim_end_matches(':');
                let path = match path.rsplit_once("::{") {
                    Some((head, _)) => head,
                    None => path,
                };
                out.push(join(&base, path));
            }
        }
    }
    out
}

/// The paths of `code`'s `use` declarations that start with a bare name (`use authz::X`;
/// `self::` is covered by [`references`]), resolved against `module`: such a path names a
/// submodule, or another crate (which resolves to no module and drops out).
fn relative_uses(module: &str, code: &str) -> Vec<String> {
    let own = if module == "crate" { "" } else { module };
    let mut out = Vec::new();
    for statement in code.split(';') {
        let statement = statement.trim_start();
        let Some(tree) = ["use ", "pub use ", "pub(crate) use ", "pub(super) use "]
            .iter()
            .find_map(|prefix| statement.strip_prefix(prefix))
        else {
            continue;
        };
        let tree = tree.trim();
        if ["crate::", "super::", "self::", "::"]
            .iter()
            .any(|anchored| tree.starts_with(anchored))
        {
            continue;
        }
        let mut paths = Vec::new();
        flatten_tree("", tree, &mut paths);
        out.extend(paths.into_iter().map(|path| join(own, &path)));
    }
    out
}

/// What modules re-export from their submodules with `use`: (module, name) → the module
/// defining it. A reference to `crate::auth::Foo` then counts as one to the module that
/// defines `Foo`, not to the `auth` facade.
fn re_exports(sources: &BTreeMap<String, String>) -> BTreeMap<(String, String), String> {
    let mut names = BTreeMap::new();
    for (module, code) in sources {
        for path in relative_uses(module, code) {
            let Some((defining, name)) = path.rsplit_once("::") else {
                continue;
            };
            if defining != module && sources.contains_key(defining) {
                names.insert((module.clone(), name.to_owned()), defining.to_owned());
            }
        }
    }
    names
}

/// The module of the crate `path` names: its longest prefix that is a module, followed
/// through re-exports.
fn resolve(
    path: &str,
    sources: &BTreeMap<String, String>,
    re_exported: &BTreeMap<(String, String), String>,
) -> Option<String> {
    let parts: Vec<&str> = path.split("::").collect();
    let k = (1..=parts.len())
        .rev()
        .find(|k| sources.contains_key(&parts[..*k].join("::")))?;
    let mut module = parts[..k].join("::");
    if let Some(name) = parts.get(k) {
        for _ in 0..8 {
            match re_exported.get(&(module.clone(), (*name).to_owned())) {
                Some(defining) => module = defining.clone(),
                None => break,
            }
        }
    }
    Some(module)
}

/// Module → the modules of the same crate it refers to. A module's references to its own
/// submodules are left out: a parent contains and re-exports its children, and a child may
/// use what its parent defines; a cycle is a loop between modules neither of which
/// contains the other (`routes::auth` → `routes::users` → `routes::auth`).
fn module_graph(krate: &str) -> BTreeMap<String, BTreeSet<String>> {
    let src = workspace().join(krate).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    // A binary beside a library is a crate of its own (its `crate::` is itself).
    let main = src.join("main.rs");
    let has_lib = src.join("lib.rs").is_file();
    let sources: BTreeMap<String, String> = files
        .iter()
        .filter(|file| !(has_lib && **file == main))
        .filter_map(|file| {
            let name = module_name(&src, file)?;
            let source = fs::read_to_string(file).expect("a readable source file");
            Some((name, code_of(&source)))
        })
        .collect();
    let re_exported = re_exports(&sources);
    let mut graph = BTreeMap::new();
    for (module, code) in &sources {
        let contains = |target: &String| {
            module == "crate" || target == module || target.starts_with(&format!("{module}::"))
        };
        let targets = references(module, code)
            .into_iter()
            .chain(relative_uses(module, code))
            .filter_map(|path| resolve(&path, &sources, &re_exported))
            .filter(|target| !contains(target))
            .collect();
        graph.insert(module.clone(), targets);
    }
    graph
}

/// The strongly connected components of more than one module (Tarjan's algorithm).
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct Walk<'g> {
        graph: &'g BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'g str, usize>,
        low: BTreeMap<&'g str, usize>,
        stack: Vec<&'g str>,
        found: Vec<Vec<String>>,
    }
    impl<'g> Walk<'g> {
        fn visit(&mut self, v: &'g str) {
            let i = self.index.len();
            self.index.insert(v, i);
            self.low.insert(v, i);
            self.stack.push(v);
            for w in self.graph.get(v).into_iter().flatten() {
                let w = w.as_str();
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let low = self.low[v].min(self.low[w]);
                    self.low.insert(v, low);
                } else if self.stack.contains(&w) {
                    let low = self.low[v].min(self.index[w]);
                    self.low.insert(v, low);
                }
            }
            if self.low[v] == self.index[v] {
                let mut component = Vec::new();
                while let Some(w) = self.stack.pop() {
                    component.push(w.to_owned());
                    if w == v {
                        break;
                    }
                }
                if component.len() > 1 {
                    component.sort();
                    self.found.push(component);
                }
            }
        }
    }
    let mut walk = Walk {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        found: Vec::new(),
    };
    for v in graph.keys() {
        if !walk.index.contains_key(v.as_str()) {
            walk.visit(v);
        }
    }
    walk.found
}

#[test]
fn no_crate_has_an_import_cycle() {
    let (mut found, mut edges) = (Vec::new(), 0);
    let crates: Vec<String> = members().into_iter().filter(|m| m != "tests").collect();
    assert!(crates.len() > 10, "members: {crates:?}");
    for krate in &crates {
        let graph = module_graph(krate);
        assert!(!graph.is_empty(), "{krate} has modules to check");
        edges += graph.values().map(BTreeSet::len).sum::<usize>();
        for cycle in cycles(&graph) {
            let edges: Vec<String> = cycle
                .iter()
                .flat_map(|a| {
                    graph[a]
                        .iter()
                        .filter(|b| cycle.contains(b))
                        .map(move |b| format!("{a} -> {b}"))
                })
                .collect();
            found.push(format!("{krate}: {}", edges.join(", ")));
        }
    }
    assert!(
        edges > 100,
        "only {edges} references found: the checker is blind"
    );
    assert!(found.is_empty(), "import cycles:\n{}", found.join("\n"));
}

#[test]
fn the_checker_sees_cycles_and_use_trees() {
    let code = "use crate::{a::{b, c as d}, e};\nfn f() { super::g::h(); crate::i::j(); }";
    let mut refs = references("x::y", code);
    refs.sort();
    assert_eq!(refs, ["a::b", "a::c", "e", "i::j", "x::g::h"]);
    let graph: BTreeMap<String, BTreeSet<String>> = [
        ("a", &["b"][..]),
        ("b", &["c"][..]),
        ("c", &["a"][..]),
        ("d", &["a"][..]),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.iter().map(|s| (*s).to_owned()).collect()))
    .collect();
    assert_eq!(cycles(&graph), [["a", "b", "c"]]);
    let code = code_of(
        "fn a() {}\n// crate::b\n#[cfg(test)]\nuse crate::c;\n/* crate::d */\n#[cfg(test)]\nmod tests { fn t() { crate::e(); } }\nfn f() { crate::g(); }",
    );
    assert!(
        !code.contains("crate::b") && !code.contains("crate::c"),
        "{code}"
    );
    assert!(
        !code.contains("crate::d") && !code.contains("crate::e"),
        "{code}"
    );
    assert!(
        code.contains("crate::g"),
        "code after a test item is kept: {code}"
    );
    let mut uses = relative_uses("auth", "pub use authz::{Authorized, perm};\nuse std::fmt;");
    uses.sort();
    assert_eq!(
        uses,
        [
            "auth::authz::Authorized",
            "auth::authz::perm",
            "auth::std::fmt"
        ]
    );
}

#[test]
fn no_domain_crate_depends_on_poem() {
    let members = members();
    assert!(members.len() > 10, "members: {members:?}");
    for name in members {
        if HTTP_CRATES.contains(&name.as_str()) {
            continue;
        }
        let manifest = workspace().join(&name).join("Cargo.toml");
        let text = fs::read_to_string(&manifest).expect("a readable manifest");
        let poem = text
            .lines()
            .map(str::trim_start)
            .find(|line| line.starts_with("poem"));
        assert!(poem.is_none(), "{name} depends on poem: {poem:?}");
    }
}
