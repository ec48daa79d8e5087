use which::which;

/// Rebuild the programs when bpf-linker changes: cargo cannot see that dependency otherwise
/// (the aya-template does the same).
fn main() {
    let bpf_linker = which("bpf-linker").expect(
        "bpf-linker is not on PATH: run `cargo xtask setup` (it builds bpf-linker against LLVM 22)",
    );
    println!("cargo:rerun-if-changed={}", bpf_linker.display());
}
