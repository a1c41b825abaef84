//! Which path names `lifecycle-core` in the user's crate, even when it was renamed in
//! `Cargo.toml`.

use proc_macro_crate::{FoundCrate, crate_name};
use proc_macro2::Span;
use syn::{Ident, Path};

/// The user's name for `lifecycle-core`, as an absolute path.
pub(crate) fn core() -> Path {
    let name = match crate_name("lifecycle-core") {
        Ok(FoundCrate::Name(name)) => name,
        // `Itself` is lifecycle-core's own tests and doctests, which name it `lifecycle_core`.
        Ok(FoundCrate::Itself) | Err(_) => "lifecycle_core".to_owned(),
    };
    let ident = Ident::new(&name, Span::call_site());
    syn::parse_quote!(::#ident)
}
