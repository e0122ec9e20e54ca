"""One-call patches that put the cosmos_kernels ops into other model code.

`cosmos_kernels.integrations.diffusers`: `apply_cosmos_kernels(model)` / `remove_cosmos_kernels(model)` for
diffusers' `CosmosTransformer3DModel` and `WanTransformer3DModel`. Importing this package imports no model library.
"""
