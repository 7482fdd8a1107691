"""One module per CLI command; each parses options, builds a config and calls one library function."""
