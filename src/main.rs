fn main() -> std::process::ExitCode {
    ddc_edge::cli::main()
}
