//! `ytcaption-chaos`: the chaos harness. A stub until the peer cluster exists; see issue 5.

fn main() {
    eprintln!("ytcaption-chaos: not built yet; the chaos harness arrives with the peer cluster");
    std::process::exit(2);
}
