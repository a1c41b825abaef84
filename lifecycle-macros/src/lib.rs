//! `#[derive(Component)]` and `#[lifecycle_core::main]`. Use them through `lifecycle-core`, which
//! re-exports both behind its default `macros` feature.
//!
//! Each macro is a small compiler: it parses its input into a typed tree that keeps the user's
//! tokens ([`ast`], [`attr`]), checks it ([`valid`]), and writes the code ([`expand`],
//! [`entry`]). A mistake is reported on the user's token with the valid options, and whatever can
//! still be expanded is, so one mistake does not cascade into ten.

use proc_macro::TokenStream;

mod ast;
mod attr;
mod crate_path;
mod duration;
mod entry;
mod expand;
mod valid;

/// Implements `lifecycle_core::Component` for a struct. See the `lifecycle_core::Component`
/// derive documentation for the attributes.
#[proc_macro_derive(Component, attributes(component))]
pub fn derive_component(input: TokenStream) -> TokenStream {
    let input = syn::parse_macro_input!(input as syn::DeriveInput);
    expand::derive(&input).into()
}

/// Runs an `async fn` that returns a `RegistryBuilder` as the whole program: builds the tokio
/// runtime, runs the registry, writes the report when the run failed, and exits with its code.
#[proc_macro_attribute]
pub fn main(args: TokenStream, item: TokenStream) -> TokenStream {
    entry::main(args.into(), item.into()).into()
}
