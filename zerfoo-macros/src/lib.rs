//! Procedural macros for zerfoo.
//!
//! - [`dim!`](macro@dim): declare a named static dimension backed by a typenum value.
//! - [`derive(Module)`](derive@Module): parameter traversal with dotted paths.

mod module;

use proc_macro::TokenStream;
use proc_macro2::TokenStream as TokenStream2;
use quote::quote;
use syn::parse::{Parse, ParseStream};
use syn::{Attribute, Ident, LitInt, Token, Visibility};

struct DimDecl {
    attrs: Vec<Attribute>,
    vis: Visibility,
    name: Ident,
    value: LitInt,
}

impl Parse for DimDecl {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let attrs = input.call(Attribute::parse_outer)?;
        let vis: Visibility = input.parse()?;
        let name: Ident = input.parse()?;
        input.parse::<Token![=]>()?;
        let value: LitInt = input.parse()?;
        let _ = input.parse::<Option<Token![;]>>()?;
        Ok(DimDecl {
            attrs,
            vis,
            name,
            value,
        })
    }
}

/// The typenum type for `n`: `UInt<UInt<UTerm, B1>, B0>` for 2, and so on.
fn typenum_of(n: u64) -> TokenStream2 {
    if n == 0 {
        return quote!(::zerfoo::typenum::UTerm);
    }
    let mut ty = quote!(::zerfoo::typenum::UTerm);
    for bit in (0..(64 - n.leading_zeros())).rev() {
        let b = if (n >> bit) & 1 == 1 {
            quote!(::zerfoo::typenum::B1)
        } else {
            quote!(::zerfoo::typenum::B0)
        };
        ty = quote!(::zerfoo::typenum::UInt<#ty, #b>);
    }
    ty
}

/// Declares a named static dimension: `dim!(pub Hidden = 768);`
///
/// The dim prints as `Hidden` in every shape error, and is compared **by
/// value**: a `Hidden = 768` and an `Embed = 768` line up, a `Ffn = 3072` does not.
#[proc_macro]
pub fn dim(input: TokenStream) -> TokenStream {
    let decl = syn::parse_macro_input!(input as DimDecl);
    let value: u64 = match decl.value.base10_parse() {
        Ok(v) => v,
        Err(e) => return e.to_compile_error().into(),
    };
    let DimDecl {
        attrs, vis, name, ..
    } = decl;
    let ty = typenum_of(value);
    let size = value as usize;
    let doc = format!("The static dimension `{name}` = {value}.");
    quote! {
        #[doc = #doc]
        #(#attrs)*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
        #vis struct #name;
        impl ::zerfoo::shape::Dim for #name {
            type Kind = ::zerfoo::shape::Static<#ty>;
            const STATIC: ::core::option::Option<usize> = ::core::option::Option::Some(#size);
            #[inline]
            fn size(&self) -> usize {
                #size
            }
            #[inline]
            fn from_size(n: usize) -> ::core::option::Option<Self> {
                if n == #size { ::core::option::Option::Some(#name) } else { ::core::option::Option::None }
            }
        }
        impl ::zerfoo::shape::StaticDim for #name {}
    }
    .into()
}

/// Derives `zerfoo::nn::Module`: visits every field's parameters under the
/// field's name (`blocks.3.attn.q_proj.weight`), and `ToDtype` /
/// `FixedDtype` so that `model.to_dtype::<bf16>()` rebuilds the struct with
/// its dtype parameter replaced.
///
/// Field options: `#[module(skip)]` for configuration values (cloned by
/// `to_dtype`), `#[module(rename = "name")]` for the checkpoint name.
/// Struct options: `#[module(sequential)]` also derives `Forward`, chaining
/// the fields in order (the compiler checks that each output is the next
/// input); `#[module(dtype = E)]` names the dtype parameter when it is not the
/// single type parameter bounded by `FloatDtype`. A type parameter bounded by
/// `Module` is a sub-module: `to_dtype` converts it along.
///
/// Every misuse (an enum or union, an unknown option, `rename` on a skipped
/// field, `sequential` without a layer field, a field whose type is a bare
/// dtype or dim parameter) is a compile error pointing at the spot.
#[proc_macro_derive(Module, attributes(module))]
pub fn derive_module(input: TokenStream) -> TokenStream {
    let input = syn::parse_macro_input!(input as syn::DeriveInput);
    match module::derive(input) {
        Ok(ts) => ts.into(),
        Err(e) => e.to_compile_error().into(),
    }
}
