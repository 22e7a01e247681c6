fn main() {
    // sqlx::migrate! embeds the migrations at build time; new files must rebuild.
    println!("cargo:rerun-if-changed=migrations");
}
