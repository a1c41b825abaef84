//! `#[lifecycle_core::main]`: an `async fn` that returns the registry builder becomes the
//! program's `main`.

use proc_macro2::{Span, TokenStream};
use quote::{quote, quote_spanned};
use syn::meta::ParseNestedMeta;
use syn::parse::Parser;
use syn::spanned::Spanned;
use syn::{ItemFn, LitBool, LitInt, LitStr, Path, ReturnType};

use crate::attr::{ContainerAttrs, Errors, choice};
use crate::{crate_path, duration};

const KEYS: &[&str] = &[
    "shutdown_deadline",
    "drain_delay",
    "signals",
    "flavor",
    "worker_threads",
    "report",
    "setup",
    "restart",
    "backoff",
    "max_restarts",
    "jitter",
    "crate",
];
const SIGNALS: &[(&str, &str)] =
    &[("TERM", "Terminate"), ("INT", "Interrupt"), ("HUP", "Hangup"), ("QUIT", "Quit")];

/// The attribute's options, each remembering where it was set.
#[derive(Default)]
struct Options {
    shutdown_deadline: Option<(u64, Span)>,
    drain_delay: Option<(u64, Span)>,
    signals: Option<(Vec<&'static str>, Span)>,
    worker_threads: Option<(usize, Span)>,
    current_thread: Option<(bool, Span)>,
    report_always: Option<(bool, Span)>,
    setup: Option<(Path, Span)>,
    krate: Option<(Path, Span)>,
    /// `restart`, `backoff`, `max_restarts`, `jitter`: the registry's default restart policy,
    /// written and checked as on a derived component.
    restart: ContainerAttrs,
}

impl Options {
    fn parse_key(&mut self, meta: &ParseNestedMeta<'_>) -> syn::Result<()> {
        let key = meta.path.get_ident().map(ToString::to_string).unwrap_or_default();
        let span = meta.path.span();
        let first = match key.as_str() {
            "restart" | "backoff" | "max_restarts" | "jitter" => return self.restart.parse_key(meta),
            "shutdown_deadline" => self.shutdown_deadline.replace((duration(meta)?, span)).map(|(_, s)| s),
            "drain_delay" => self.drain_delay.replace((duration(meta)?, span)).map(|(_, s)| s),
            "signals" => self.signals.replace((signals(meta)?, span)).map(|(_, s)| s),
            "worker_threads" => {
                let threads: LitInt = meta.value()?.parse()?;
                let count: usize = threads.base10_parse()?;
                if count == 0 {
                    return Err(syn::Error::new(threads.span(), "`worker_threads` must be at least 1"));
                }
                self.worker_threads.replace((count, span)).map(|(_, s)| s)
            }
            "flavor" => {
                let current = choice(
                    &meta.value()?.parse()?,
                    "flavor",
                    &[("multi_thread", false), ("current_thread", true)],
                )?;
                self.current_thread.replace((current, span)).map(|(_, s)| s)
            }
            "report" => {
                let always =
                    choice(&meta.value()?.parse()?, "report", &[("on_failure", false), ("always", true)])?;
                self.report_always.replace((always, span)).map(|(_, s)| s)
            }
            "setup" => {
                let path: Path = meta.value()?.parse()?;
                self.setup.replace((path, span)).map(|(_, s)| s)
            }
            "crate" => {
                let path: LitStr = meta.value()?.parse()?;
                self.krate.replace((path.parse()?, span)).map(|(_, s)| s)
            }
            _ => {
                let closest =
                    KEYS.iter().map(|k| (strsim::levenshtein(&key, k), *k)).filter(|(d, _)| *d <= 2).min();
                let hint = closest.map(|(_, k)| format!("; did you mean `{k}`?")).unwrap_or_default();
                return Err(meta.error(format!(
                    "unknown `lifecycle_core::main` option `{key}`{hint}\nvalid options: {}",
                    KEYS.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ")
                )));
            }
        };
        match first {
            Some(first) => {
                let mut error = meta.error(format!("duplicate `{key}`: it is already set"));
                error.combine(syn::Error::new(first, format!("`{key}` first set here")));
                Err(error)
            }
            None => Ok(()),
        }
    }
}

fn duration(meta: &ParseNestedMeta<'_>) -> syn::Result<u64> {
    let text: LitStr = meta.value()?.parse()?;
    duration::parse(&text.value()).map_err(|message| syn::Error::new(text.span(), message))
}

/// `signals = "TERM, INT"`, `signals = false` (none) or `signals = true` (the default pair).
fn signals(meta: &ParseNestedMeta<'_>) -> syn::Result<Vec<&'static str>> {
    let input = meta.value()?;
    if input.peek(LitBool) {
        let enabled: LitBool = input.parse()?;
        return Ok(if enabled.value { vec!["Terminate", "Interrupt"] } else { Vec::new() });
    }
    let text: LitStr = input.parse()?;
    text.value()
        .split(',')
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .map(|name| {
            let short = name.strip_prefix("SIG").unwrap_or(name);
            SIGNALS.iter().find(|(n, _)| n.eq_ignore_ascii_case(short)).map(|(_, variant)| *variant).ok_or_else(
                || {
                    syn::Error::new(
                        text.span(),
                        format!("unknown signal `{name}`; valid: TERM, INT, HUP, QUIT (or `signals = false` for none)"),
                    )
                },
            )
        })
        .collect()
}

pub(crate) fn main(args: TokenStream, item: TokenStream) -> TokenStream {
    let mut errors = Errors::default();
    let mut options = Options::default();
    if let Err(error) = syn::meta::parser(|meta| options.parse_key(&meta)).parse2(args) {
        errors.push(error);
    }
    let function: ItemFn = match syn::parse2(item.clone()) {
        Ok(function) => function,
        Err(error) => {
            errors.push(syn::Error::new(
                error.span(),
                "`#[lifecycle_core::main]` goes on the program's `async fn main() -> RegistryBuilder`",
            ));
            let errors = errors.into_compile_errors();
            return quote!(#item #errors);
        }
    };
    let signature = &function.sig;
    // A function that is not `async` is reported and then expanded as if it were, so that the
    // one mistake does not bring the compiler's own complaints about `main` with it.
    if signature.asyncness.is_none() {
        errors.push(syn::Error::new(
            signature.fn_token.span(),
            "`#[lifecycle_core::main]` needs an `async fn`: it runs the function on the runtime it builds",
        ));
    }
    let mut unusable = Errors::default();
    match (&options.setup, signature.inputs.len()) {
        (None, 0) | (Some(_), 1) => {}
        (None, _) => unusable.push(syn::Error::new(
            signature.inputs.span(),
            "`#[lifecycle_core::main]` takes no arguments, or one with `setup = path` (the setup's value)",
        )),
        (Some((_, span)), 0) => unusable.push(syn::Error::new(
            *span,
            "`setup` passes its value to the function: give it one argument, as in \
             `async fn main(listeners: Listeners)`",
        )),
        (Some(_), _) => unusable.push(syn::Error::new(
            signature.inputs.iter().nth(1).map_or_else(|| signature.inputs.span(), Spanned::span),
            "`#[lifecycle_core::main]` with `setup` takes one argument: the setup's value",
        )),
    }
    if !signature.generics.params.is_empty() {
        unusable
            .push(syn::Error::new(signature.generics.span(), "`#[lifecycle_core::main]` cannot be generic"));
    }
    if let ReturnType::Default = signature.output {
        unusable.push(syn::Error::new(
            signature.ident.span(),
            "`#[lifecycle_core::main]` returns the `RegistryBuilder` with its components: add `-> RegistryBuilder`",
        ));
    }
    if !unusable.is_empty() {
        // Nothing to run: keep the body type-checked inside a plain `main`, and report.
        let ItemFn { attrs, vis, sig, block } = &function;
        let (ident, inputs, output) = (&sig.ident, &sig.inputs, &sig.output);
        let errors = errors.into_compile_errors();
        let unusable = unusable.into_compile_errors();
        return quote! {
            #(#attrs)*
            #vis fn #ident() {
                #[allow(dead_code)]
                async fn body(#inputs) #output #block
            }
            #errors
            #unusable
        };
    }
    if let (Some((true, _)), Some((_, threads))) = (options.current_thread, options.worker_threads) {
        errors.push(syn::Error::new(
            threads,
            "`worker_threads` needs the multi-threaded runtime; `flavor = \"current_thread\"` runs on one thread",
        ));
    }
    crate::valid::check_restart_keys(&options.restart, &mut errors);
    let errors = errors.into_compile_errors();

    let core = options.krate.map_or_else(crate_path::core, |(path, _)| path);
    let default_restart = match crate::expand::restart_policy(&options.restart, &core) {
        Some(policy) => quote!(::core::option::Option::Some(#policy)),
        None => quote!(::core::option::Option::None),
    };
    let some_duration = |value: Option<(u64, Span)>| match value {
        Some((nanos, _)) => quote!(::core::option::Option::Some(::core::time::Duration::from_nanos(#nanos))),
        None => quote!(::core::option::Option::None),
    };
    let shutdown_deadline = some_duration(options.shutdown_deadline);
    let drain_delay = some_duration(options.drain_delay);
    let signals = match options.signals {
        Some((names, _)) => {
            let variants = names.iter().map(|v| syn::Ident::new(v, Span::call_site()));
            quote!(::core::option::Option::Some(&[#(#core::Signal::#variants),*]))
        }
        None => quote!(::core::option::Option::None),
    };
    let worker_threads = match options.worker_threads {
        Some((threads, _)) => quote!(::core::option::Option::Some(#threads)),
        None => quote!(::core::option::Option::None),
    };

    let report_always = options.report_always.is_some_and(|(always, _)| always);
    let current_thread = options.current_thread.is_some_and(|(current, _)| current);
    let ItemFn { attrs, vis, sig, block } = function;
    let ident = &sig.ident;
    let output = &sig.output;
    let inputs = &sig.inputs;
    // Before the runtime exists: the setup may change the environment, which is only sound
    // while the process has one thread.
    let (prepare, argument) = match &options.setup {
        Some((setup, _)) => (
            quote_spanned! {setup.span()=> let prepared = #core::macro_support::run_setup(#setup()); },
            quote!(prepared),
        ),
        None => (quote!(), quote!()),
    };
    let run = quote_spanned! {sig.output.span()=>
        #core::macro_support::run_main(options, signals, body(#argument))
    };
    quote! {
        #errors
        #(#attrs)*
        #vis fn #ident() {
            async fn body(#inputs) #output #block
            let options = #core::macro_support::MainOptions {
                shutdown_deadline: #shutdown_deadline,
                drain_delay: #drain_delay,
                signals: #signals,
                worker_threads: #worker_threads,
                current_thread: #current_thread,
                report_always: #report_always,
                default_restart: #default_restart,
            };
            // First thing: from here a signal is kept for the run, not fatal.
            let signals = #core::macro_support::catch_signals(&options);
            #prepare
            #run
        }
    }
}
