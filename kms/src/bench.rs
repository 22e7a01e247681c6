pub async fn run(_cli: &crate::cli::Cli, _b: &crate::cli::BenchArgs) -> anyhow::Result<()> {
    Ok(())
}
