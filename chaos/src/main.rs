//! `rouse-chaos`: the seeded fault-injection harness over real rouse
//! processes. The harness itself is still to be written; until then this
//! binary says so and fails, so that no script mistakes it for a pass.

fn main() -> std::process::ExitCode {
    eprintln!("rouse-chaos: the chaos suite is not built yet; no run was made");
    std::process::ExitCode::from(2)
}
