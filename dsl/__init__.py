"""The cnnc DSL: grammar, parser with source spans, and the AST -> IR builder."""
