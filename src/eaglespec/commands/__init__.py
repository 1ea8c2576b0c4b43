"""One module per CLI command: `configure_parser(parser)` and `run(args) -> int`; thin over the library."""
