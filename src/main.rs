use std::process::ExitCode;

fn main() -> ExitCode {
    wharfie::cli::main()
}
