"""Stack catalog: silo + instance Terraform templates and how runbot fills their inputs.

Import from the submodules (`app.stacks.catalog`, `app.stacks.mapping`,
`app.stacks.git`); this package module stays empty so that importing the pure
mapping does not pull in the HCL parser or git.
"""
