//! The embedded web client: files of `assets/`, compiled into the binary with rust-embed.

use poem::{Endpoint, endpoint::EmbeddedFilesEndpoint};
use rust_embed::RustEmbed;

#[derive(RustEmbed)]
#[folder = "assets/"]
struct Assets;

/// Serves `assets/` at `/`, with `index.html` for `/`.
pub fn endpoint() -> impl Endpoint {
    EmbeddedFilesEndpoint::<Assets>::new()
}
