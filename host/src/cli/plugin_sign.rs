//! `weft plugin keygen` and `weft plugin sign`: a publisher's ed25519 key pair, and detached
//! signatures of components a control plane can require (`--require-signed-plugins`).

use anyhow::Context;
use std::path::PathBuf;

/// Arguments of `weft plugin keygen`.
#[derive(Debug, clap::Args)]
pub struct KeygenArgs {
    /// Writes `<out>.key` (the private key, owner-only) and `<out>.pub` (the public key to give
    /// control planes).
    #[arg(long)]
    out: PathBuf,
}

/// Arguments of `weft plugin sign`.
#[derive(Debug, clap::Args)]
pub struct SignArgs {
    /// The component (`.wasm`).
    file: PathBuf,
    /// The private key (PEM, ed25519: `weft plugin keygen`, or `openssl genpkey -algorithm ed25519`).
    #[arg(long)]
    key: PathBuf,
}

/// Runs `weft plugin keygen`.
pub fn keygen(args: KeygenArgs) -> anyhow::Result<()> {
    let (private, public) = weft::control::signing::generate().map_err(anyhow::Error::msg)?;
    let with = |ext: &str| {
        let mut p = args.out.clone().into_os_string();
        p.push(ext);
        PathBuf::from(p)
    };
    let (key, public_path) = (with(".key"), with(".pub"));
    weft::files::write_atomic(&key, private.as_bytes(), weft::files::Mode::Private)
        .with_context(|| format!("writing {}", key.display()))?;
    weft::files::write_atomic(&public_path, public.as_bytes(), weft::files::Mode::Public)
        .with_context(|| format!("writing {}", public_path.display()))?;
    println!("{}\n{}", key.display(), public_path.display());
    Ok(())
}

/// Runs `weft plugin sign`: writes `<file>.sig` and prints its path.
pub fn sign(args: SignArgs) -> anyhow::Result<()> {
    let wasm =
        std::fs::read(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
    let key = std::fs::read_to_string(&args.key)
        .with_context(|| format!("reading {}", args.key.display()))?;
    let signature = weft::control::signing::sign(&key, &wasm)
        .map_err(|e| anyhow::anyhow!("{}: {e}", args.key.display()))?;
    let mut out = args.file.clone().into_os_string();
    out.push(".sig");
    let out = PathBuf::from(out);
    weft::files::write_atomic(
        &out,
        format!("{signature}\n").as_bytes(),
        weft::files::Mode::Public,
    )
    .with_context(|| format!("writing {}", out.display()))?;
    println!("{}", out.display());
    Ok(())
}
