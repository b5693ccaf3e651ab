//! Links the release binary with the code a sync runs placed together (Linux only).
//!
//! Linux maps a program's code into memory 64 KiB around each page that runs ("fault-around"),
//! and the linker lays functions out in the order the compiler emitted them: the 2.6 MB of
//! code a catch-up and an idle cycle run are spread through the whole 12 MB of `.text`, so
//! about 8.3 MiB of it was resident — a third of the 1M catch-up's peak RSS, over the 25 MB of
//! issue 9 in some runs. `packaging/linux/hot-text.ld` names the functions that run
//! (`scripts/hot-text.sh` writes it from a run under callgrind) and asks the linker to put them
//! in one output section ahead of `.text`; the rest — login, tray, pull, configuration errors
//! — stays where it was and is mapped only if it runs. A function that is not in the list, or
//! renamed since, is only placed with the cold code: the binary is the same program either way.
//!
//! Release builds only (the one that ships and that the benchmark measures); the tests' debug
//! builds link as before. Both linkers a Linux build uses (LLD, rustc's default since 1.90,
//! and GNU ld) read `SECTIONS … INSERT BEFORE .text` as an addition to their default layout;
//! with a linker that does not (mold), build with `SAMAY_NO_HOT_TEXT=1`.

fn main() {
    const SCRIPT: &str = "packaging/linux/hot-text.ld";
    println!("cargo:rerun-if-changed={SCRIPT}");
    println!("cargo:rerun-if-changed=packaging/build.rs");
    // Off for another linker, and for scripts/hot-text.sh while it writes a new list.
    println!("cargo:rerun-if-env-changed=SAMAY_NO_HOT_TEXT");
    let wanted = std::env::var_os("SAMAY_NO_HOT_TEXT").is_none();
    let linux = std::env::var("CARGO_CFG_TARGET_OS").is_ok_and(|os| os == "linux");
    let release = std::env::var("PROFILE").is_ok_and(|p| p == "release");
    if wanted && linux && release {
        let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".to_owned());
        println!("cargo:rustc-link-arg-bin=aw-sync-samay=-Wl,-T,{dir}/{SCRIPT}");
    }
}
