//! Host bindings generated from `wit/`: the `plugin` world, its imports to implement and its
//! exports to call.

#![allow(missing_docs)]

wasmtime::component::bindgen!({
    path: "../wit",
    world: "plugin",
});
