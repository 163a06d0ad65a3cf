//! etcd-client (the cluster's etcd v3 client) compiles etcd's .proto files with protoc in its
//! own build script. `.cargo/config.toml` points PROTOC at `tools/protoc`, which runs the
//! binary that protoc-bin-vendored carries; depending on that crate here is what makes cargo
//! download it on a machine that has only cargo. This script checks it is usable and says so
//! early, with the fix, where it is not.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=PROTOC");
    if std::env::var_os("PROTOC").is_none() {
        println!("cargo:warning=PROTOC is not set: run cargo from the repository so that .cargo/config.toml applies, or set PROTOC");
    }
    if let Err(e) = protoc_bin_vendored::protoc_bin_path() {
        println!("cargo:warning=no vendored protoc for this platform ({e}); tools/protoc falls back to protoc on PATH (apt-get install protobuf-compiler)");
    }
}
