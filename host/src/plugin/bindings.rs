//! Host bindings generated from `wit/`: the `plugin` world, its imports to implement and its
//! exports to call.

#![allow(missing_docs)]

wasmtime::component::bindgen!({
    path: "../wit",
    world: "plugin",
    with: {
        "weft:filter/types.request": super::host_impl::RequestSlot,
        "weft:filter/types.response": super::host_impl::ResponseSlot,
    },
});
