"""The compiler: IR, operators, passes and code generation."""
