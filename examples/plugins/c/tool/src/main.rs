//! Build helper for `examples/plugins/c`: what `wit-bindgen c` and `wasm-tools component new`
//! would do, from the same crates at versions that match the rest of the repository.
//!
//!     weft-c-plugin-tool bindgen WIT_DIR WORLD OUT_DIR   # OUT_DIR/<world>.h, .c, _component_type.o
//!     weft-c-plugin-tool componentize CORE.wasm OUT.wasm # core module + embedded type → component
//!     weft-c-plugin-tool imports CORE.wasm               # lists a core module's imports

use std::path::Path;

use anyhow::{Context, Result, bail};
use wit_bindgen_core::Files;
use wit_bindgen_core::wit_parser::Resolve;

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weft-c-plugin-tool: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["bindgen", wit, world, out] => bindgen(Path::new(wit), world, Path::new(out)),
        ["componentize", core, out] => componentize(Path::new(core), Path::new(out)),
        ["imports", core] => {
            let module = std::fs::read(core).with_context(|| format!("reading {core}"))?;
            for (module, name) in core_imports(&module)? {
                println!("{module}::{name}");
            }
            Ok(())
        }
        _ => bail!(
            "usage: weft-c-plugin-tool bindgen WIT_DIR WORLD OUT_DIR\n       \
             weft-c-plugin-tool componentize CORE.wasm OUT.wasm\n       \
             weft-c-plugin-tool imports CORE.wasm"
        ),
    }
}

fn bindgen(wit: &Path, world: &str, out: &Path) -> Result<()> {
    let mut resolve = Resolve::default();
    let (pkg, _) = resolve
        .push_dir(wit)
        .with_context(|| format!("reading WIT from {}", wit.display()))?;
    let world = resolve.select_world(&[pkg], Some(world))?;
    let mut files = Files::default();
    wit_bindgen_c::Opts::default()
        .build()
        .generate(&mut resolve, world, &mut files)?;
    std::fs::create_dir_all(out)?;
    for (name, contents) in files.iter() {
        let path = out.join(name);
        std::fs::write(&path, contents).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn componentize(core: &Path, out: &Path) -> Result<()> {
    let module = std::fs::read(core).with_context(|| format!("reading {}", core.display()))?;
    // No WASI adapter is bundled: a core module that imports WASI preview 1 (the C library
    // writing to stdout, reading the clock, ...) is refused here, naming what pulled it in.
    let wasi: Vec<String> = core_imports(&module)?
        .into_iter()
        .filter(|(module, _)| module.starts_with("wasi"))
        .map(|(module, name)| format!("{module}::{name}"))
        .collect();
    if !wasi.is_empty() {
        bail!(
            "{} imports WASI ({}); the plugin may use only the C library's memory and string \
             functions, and the host's functions for the rest",
            core.display(),
            wasi.join(", ")
        );
    }
    let component = wit_component::ComponentEncoder::default()
        .module(&module)?
        .validate(true)
        .encode()
        .context("encoding the component")?;
    std::fs::write(out, component).with_context(|| format!("writing {}", out.display()))?;
    Ok(())
}

/// The (module, name) of every import of a core module.
fn core_imports(module: &[u8]) -> Result<Vec<(String, String)>> {
    let mut imports = Vec::new();
    for payload in wasmparser::Parser::new(0).parse_all(module) {
        if let wasmparser::Payload::ImportSection(section) = payload? {
            for import in section.into_imports() {
                let import = import?;
                imports.push((import.module.to_string(), import.name.to_string()));
            }
        }
    }
    Ok(imports)
}
